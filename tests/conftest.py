"""Session-wide fixtures shared by integration and e2e tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from assembler.space import GIB, free_bytes

# Below this, a disk or guest test would hit ENOSPC midway, and QEMU (the libguestfs appliance too) pauses a
# guest whose overlay cannot grow: the test would hang instead of failing.
MIN_FREE_GIB = 3.0


def pytest_report_header(config: pytest.Config) -> str:
    """Free space where the tests write: a full disk is the usual cause of a run that fails everywhere at once."""
    where = Path(tempfile.gettempdir())
    return f"free space: {free_bytes(where) / GIB:.1f} GiB in {where} (a full run writes about 20 GiB at its peak)"


@pytest.fixture(autouse=True)
def _room_to_write(request: pytest.FixtureRequest) -> None:
    """Fail a test that needs the disk at once, with the figure, when the disk is (nearly) full."""
    if request.node.get_closest_marker("integration") is None and request.node.get_closest_marker("e2e") is None:
        return
    free = free_bytes(Path(tempfile.gettempdir())) / GIB
    if free < MIN_FREE_GIB:
        pytest.fail(f"only {free:.1f} GiB free in {tempfile.gettempdir()}; tests that write disks need "
                    f"{MIN_FREE_GIB} GiB or more: free some space", pytrace=False)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One assembler cache for the whole run, so the base is bootstrapped once (CI starts empty)."""
    env = os.environ.get("ASSEMBLER_TEST_CACHE")
    if env:
        return Path(env)
    return tmp_path_factory.mktemp("assembler-cache")
