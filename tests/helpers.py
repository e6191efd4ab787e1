"""Shared helpers: run the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run `assembler ARGS...` and return the finished process (never raises on exit status)."""
    return subprocess.run(
        [sys.executable, "-m", "assembler.cli.main", *args],
        cwd=cwd or REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def process_alive(pid: int) -> bool:
    """True while pid runs (a zombie awaiting its parent's wait() counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


@contextmanager
def scratch_dir(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A module or session fixture's working directory, removed when the fixture is torn down.

    pytest removes a passed test's tmp_path at once but keeps every fixture directory until the run ends: a
    full run would hold tens of GiB of disks that no test still reads."""
    path = factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_root(factory: pytest.TempPathFactory) -> Path:
    """The directory every worker of this run shares: under pytest-xdist (`make test` runs one worker a core)
    each worker's base temp is a child of the run's; without xdist the run's base temp itself."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def once_per_run(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """Held by one worker at a time: the first makes what `name` stands for in the yielded directory, the
    others wait and find it there (the product's own locks keep concurrent builds on one cache correct; this
    keeps them from doing the same minutes of work twice)."""
    root = run_root(factory)
    with (root / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        where = root / name
        where.mkdir(exist_ok=True)
        yield where


def gpt_disk(path: Path, architecture: str, size: int = 64 << 20) -> Path:
    """A sparse disk holding only a GPT (ESP + root) of that architecture's root partition type."""
    from assembler.disk import gpt
    from assembler.disk.layout import layout_from_dict, plan_partitions

    with path.open("wb") as handle:
        handle.truncate(size)
    layout = layout_from_dict({"firmware": ["uefi"], "architecture": architecture, "partitions": [
        {"role": "esp", "size": "33MiB", "fs": "vfat"}, {"role": "root", "fs": "ext4"}]})
    planned = plan_partitions(layout, 16 << 20)
    gpt.write_gpt(path, "8A6F3F2C-0000-4000-8000-000000000001",
                  [(p, f"8A6F3F2C-0000-4000-8000-00000000000{p.number + 1}", p.role) for p in planned],
                  architecture)  # type: ignore[arg-type]
    return path
