"""A full filesystem (a real 16 MiB tmpfs): one clear error naming the fix, exit 1, no half-written file."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import cli

pytestmark = pytest.mark.integration


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_convert_into_a_full_filesystem(tmp_path: Path, tiny_fs: Path) -> None:
    raw = tmp_path / "noise.raw"
    raw.write_bytes(os.urandom(48 << 20))  # incompressible: a qcow2 of it cannot fit in 16 MiB
    proc = cli("convert", str(raw), "--format", "qcow2", "--output", str(tiny_fs / "noise.qcow2"))
    assert proc.returncode == 1, proc.stderr
    said = " ".join(proc.stderr.split())  # the console wraps long lines
    assert "No space left on device" in said
    assert "fix:" in said and f"free space in {tiny_fs}" in said
    assert "Traceback" not in said
    assert list(tiny_fs.iterdir()) == []


def test_build_refuses_up_front_when_the_cache_cannot_hold_it(tmp_path: Path, tiny_fs: Path) -> None:
    proc = cli("build", "debian-12", "--cache-dir", str(tiny_fs / "cache"), "--output", str(tmp_path / "out"),
               timeout=300)
    assert proc.returncode == 1, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "not enough free space for this build" in said and "GiB needed" in said
    assert "fix:" in said and "--cache-dir" in said
    assert "Traceback" not in said
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tiny_fs / "cache").glob("objects/*/*"))
