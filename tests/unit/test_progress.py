"""The live status line and its plain-line form, and boot stages read from a growing console log."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console

from assembler import progress
from assembler.boot import stages

# The first lines a Debian guest prints on ttyS0 (abridged from a real console log).
CONSOLE = [
    b"\x1b[2J\x1b[01;01HSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from Hard Disk...\r\n"
    b"\x1b[0;30;47mWelcome to GRUB!\r\n",  # not userspace: no kernel yet
    b"[    0.000000] Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) (gcc-12)\r\n",
    b"[    1.912345] Run /init as init process\r\n",
    b"[    4.101010] systemd[1]: Inserted module 'autofs4'\r\n",
]


def _console(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> io.StringIO:
    sink = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=sink, force_terminal=terminal, width=200,
                                                     color_system=None))
    return sink


def test_plain_lines_name_the_activities_and_the_stage_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _console(monkeypatch, terminal=False)
    progress.stage("ignored: no activity")
    with progress.activity("boot"), progress.activity("bios"):
        progress.stage("kernel")
        progress.stage("kernel")  # unchanged: no second line
        progress.stage("userspace")
    lines = sink.getvalue().splitlines()
    assert [line.split(" (")[0].strip() for line in lines] == ["boot > bios: kernel", "boot > bios: userspace"]
    assert all(line.endswith("s)") for line in lines)


def test_the_live_line_redraws_with_a_moving_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _console(monkeypatch, terminal=True)
    with progress.activity("rootfs"):
        progress.stage("Step 2/5 : RUN apt-get install -y openssh-server")
        time.sleep(1.3)
    drawn = sink.getvalue()
    assert "rootfs  Step 2/5 : RUN apt-get install" in drawn
    assert "0s" in drawn and "1s" in drawn  # redrawn while running, not printed once
    assert "rootfs: Step 2/5" not in drawn  # a terminal gets no plain line unless asked to keep one


def test_elapsed_reads_in_minutes_past_a_minute() -> None:
    assert [progress.elapsed(s) for s in (0.4, 59.6, 61, 3599)] == ["0s", "60s", "1m01s", "59m59s"]


def test_stages_are_seen_in_boot_order_as_the_console_grows(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(CONSOLE[0])
    reached: list[str] = []
    watch = stages.ConsoleWatch(log, time.monotonic(), reached.append)
    with watch.running():
        time.sleep(stages.POLL * 2)
        assert reached == []
        with log.open("ab") as f:
            f.write(CONSOLE[1][:30])  # a marker split across two writes is still found
            f.flush()
            time.sleep(stages.POLL * 2)
            f.write(CONSOLE[1][30:] + CONSOLE[2])
            f.flush()
            time.sleep(stages.POLL * 3)
            assert reached == ["kernel"]
            f.write(CONSOLE[3])
    assert reached == ["kernel", "userspace"]
    assert watch.times["kernel"] <= watch.times["userspace"]


def test_the_split_stops_at_the_first_stage_not_seen() -> None:
    assert stages.split({"kernel": 3.0, "userspace": 9.5}, 20.0) == {"firmware": 3.0, "kernel": 6.5,
                                                                    "userspace": 10.5}
    assert stages.split({"userspace": 9.5}, 20.0) == {}
    assert stages.split({"kernel": 3.0}, 20.0) == {"firmware": 3.0}
    assert stages.seen(b"".join(CONSOLE)) == ["kernel", "userspace"]
    assert stages.seen(CONSOLE[0] + CONSOLE[3]) == []  # systemd's line before any kernel: out of order
    assert stages.seen(CONSOLE[3], already=1) == ["userspace"]
