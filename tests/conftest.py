"""Session-wide fixtures shared by integration and e2e tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from assembler.space import GIB, free_bytes


def pytest_report_header(config: pytest.Config) -> str:
    """Free space where the tests write: a full disk is the usual cause of a run that fails everywhere at once."""
    import tempfile

    where = Path(tempfile.gettempdir())
    return f"free space: {free_bytes(where) / GIB:.1f} GiB in {where} (a full run writes about 20 GiB at its peak)"


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One assembler cache for the whole run, so the base is bootstrapped once (CI starts empty)."""
    env = os.environ.get("ASSEMBLER_TEST_CACHE")
    if env:
        return Path(env)
    return tmp_path_factory.mktemp("assembler-cache")
