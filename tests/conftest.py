"""Session-wide fixtures shared by integration and e2e tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from assembler.space import GIB, free_bytes
from tests.helpers import run_root

# Below this, a disk or guest test would hit ENOSPC midway, and QEMU (the libguestfs appliance too) pauses a
# guest whose overlay cannot grow: the test would hang instead of failing.
MIN_FREE_GIB = 3.0


class _Room:
    """Free space where the tests write, sampled around every test: the run's peak use, in its summary."""

    def __init__(self) -> None:
        self.where = Path(tempfile.gettempdir())
        self.start = self.low = free_bytes(self.where)
        self.low_after = ""

    def sample(self, nodeid: str) -> None:
        free = free_bytes(self.where)
        if free < self.low:
            self.low, self.low_after = free, nodeid


_ROOM = _Room()


def pytest_report_header(config: pytest.Config) -> str:
    """Free space where the tests write: a full disk is the usual cause of a run that fails everywhere at once."""
    return (f"free space: {_ROOM.start / GIB:.1f} GiB in {_ROOM.where} (a full run, the engine's images included, "
            "uses about 40 GiB at its peak)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _ROOM.sample(report.nodeid)  # after setup, call and teardown: a test's own files are still there after call


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    used = (_ROOM.start - _ROOM.low) / GIB
    terminalreporter.write_line(f"disk: at most {used:.1f} GiB more in use than at the start (lowest free "
                                f"{_ROOM.low / GIB:.1f} GiB in {_ROOM.where}, after {_ROOM.low_after or '-'})")


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
    """One assembler cache for the whole run, every worker's, so the base is bootstrapped once (CI starts empty)."""
    env = os.environ.get("ASSEMBLER_TEST_CACHE")  # `make test`: one cache for its parallel and serial parts
    path = Path(env) if env else run_root(tmp_path_factory) / "assembler-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
