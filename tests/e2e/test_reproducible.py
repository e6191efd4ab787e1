"""Same pinned inputs, cleared caches (ours and the engine's) -> the same rootfs bits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Built
from tests.helpers import cli

pytestmark = pytest.mark.e2e


def test_rootfs_tar_is_bit_identical_after_clearing_every_cache(debian12: Built, tmp_path: Path) -> None:
    out = tmp_path / "again"
    proc = cli("build", "debian-12", "--phases", "rootfs", "--no-cache",
               "--cache-dir", str(tmp_path / "fresh-cache"), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rootfs"]["sha256"] == debian12.manifest["rootfs"]["sha256"]
