"""What a person watches: `assembler build` on a real terminal (tmux) shows a live status line with a moving
clock while a step runs, and every path it prints at the end exists."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).parent / "fixtures" / "watched"
# The live line: spinner, the phase, the stage, the elapsed time; never a plain "rootfs: …" history line.
LIVE = re.compile(r"^\S rootfs  (?P<stage>.*?)  (?:(?P<m>\d+)m)?(?P<s>\d+)s\s*$")


def _pane(session: str, *extra: str) -> str:
    """The pane's text (wrapped lines joined); `-S -` for the whole scrollback."""
    return subprocess.run(["tmux", "-L", session, "capture-pane", "-p", "-J", *extra, "-t", session],
                          capture_output=True, text=True, check=True).stdout


def test_a_build_on_a_terminal_shows_live_status_and_prints_paths_that_exist(
        debian_base: str, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    session = f"assembler-watch-{os.getpid()}"
    command = (f"cd {shlex.quote(str(REPO))} && .venv/bin/assembler build {shlex.quote(str(FIXTURE))} "
               f"--no-boot-test --no-cache --cache-dir {shlex.quote(str(shared_cache))} "
               f"--output {shlex.quote(str(out))}; echo EXIT=$?; sleep 600")
    subprocess.run(["tmux", "-L", session, "new-session", "-d", "-s", session, "-x", "220", "-y", "50",
                    "env", "LANG=C.UTF-8", "TERM=tmux-256color", "bash", "-c", command], check=True)
    frames: list[str] = []
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            frames.append(_pane(session))
            if "EXIT=" in frames[-1]:
                break
            time.sleep(0.3)
        history = _pane(session, "-S", "-")
    finally:
        subprocess.run(["tmux", "-L", session, "kill-server"], check=False)
    assert "EXIT=0" in history, history[-3000:]

    live = [m for frame in frames for line in frame.splitlines() if (m := LIVE.match(line))]
    clocks = {int(m["m"] or 0) * 60 + int(m["s"]) for m in live}
    assert len(clocks) >= 3, frames[-1]  # redrawn while running, its clock moving
    assert any("RUN sleep 6" in m["stage"] for m in live)  # the Containerfile step it was on
    assert not any(LIVE.match(line) for line in history.split("EXIT=")[0].splitlines()[-3:])  # gone at the end

    tail = history[history.index("done watched in"):history.index("EXIT=")].splitlines()
    printed = [Path(line.split()[0]) for line in tail[1:] if line.startswith("  ")]
    assert {p.name for p in printed} >= {"watched.raw", "watched.qcow2", "watched.spdx.json", "watched.cdx.json",
                                         "manifest.json"}
    for path in printed:
        assert (REPO / path).is_file(), path  # relative paths are relative to the directory it ran in
    assert str(shared_cache) not in history.split("done watched in")[1]  # no cache path shown as an output
