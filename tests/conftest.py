"""Session-wide fixtures shared by integration and e2e tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One assembler cache for the whole run, so the base is bootstrapped once (CI starts empty)."""
    env = os.environ.get("ASSEMBLER_TEST_CACHE")
    if env:
        return Path(env)
    return tmp_path_factory.mktemp("assembler-cache")
