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
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_sigkill_of_assembler_takes_qemu_with_it(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "qemu.log")], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    qemu_pid = int(child.stdout.readline())
    deadline = time.monotonic() + 10
    while "qemu-system" not in Path(f"/proc/{qemu_pid}/cmdline").read_bytes().decode(errors="replace"):
        assert time.monotonic() < deadline, "QEMU did not start"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 10
    while _alive(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(qemu_pid)
    if alive:
        os.kill(qemu_pid, signal.SIGKILL)
    assert not alive, "QEMU outlived a SIGKILLed assembler"
