"""QEMU dies with assembler, even when assembler is killed by SIGKILL (issue 13, item 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHILD = """
import sys, time
from pathlib import Path
from assembler.boot.qemu import QemuProcess
qemu = QemuProcess(["qemu-system-x86_64", "-machine", "none", "-nographic", "-S", "-monitor", "none",
                    "-serial", "none"], Path(sys.argv[1]))
print(qemu.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (ProcessLookupError, OSError):
        return False
    return state != "Z"  # a zombie has died; nobody may reap it in a container


def test_sigkill_of_assembler_takes_qemu_with_it(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    with (tmp_path / "child.err").open("wb") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(log)], stdout=subprocess.PIPE, stderr=err,
                                 text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    why = lambda: (tmp_path / "child.err").read_text() + (log.read_text() if log.exists() else "")  # noqa: E731
    assert line.strip().isdigit(), why()
    qemu_pid = int(line)
    deadline = time.monotonic() + 30
    while not _is_qemu(qemu_pid):
        assert _alive(qemu_pid) and time.monotonic() < deadline, f"QEMU did not start: {why()}"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 30
    while _alive(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(qemu_pid)
    if alive:
        os.kill(qemu_pid, signal.SIGKILL)
    assert not alive, "QEMU outlived a SIGKILLed assembler"


def _is_qemu(pid: int) -> bool:
    """argv[0] is QEMU: setpriv (whose arguments name QEMU too) has set the death signal and exec'd it."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"qemu-system-x86_64")
    except OSError:
        return False
