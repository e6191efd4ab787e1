"""Bundle round trip: export debian-12's locked inputs, empty the cache and the engine's images, point every
mirror at an address that does not answer, and build from the bundle offline: the same raw disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assembler import engine
from tests.e2e.conftest import Built
from tests.helpers import cli

# It removes the engine's debian-12 and base images (the offline build must load them from the bundle): a build
# of another worker starting FROM them at that moment would fail, so it runs alone.
pytestmark = [pytest.mark.e2e, pytest.mark.exclusive]
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens


def test_build_from_a_bundle_offline_gives_the_same_disk(debian12: Built, tmp_path: Path) -> None:
    bundle = tmp_path / "debian-12.bundle.tar"
    proc = cli("bundle", str(debian12.out), "--output", str(bundle), "--cache-dir", str(debian12.cache), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["blobs"] > 200 and summary["bytes"] < bundle.stat().st_size < summary["bytes"] + 2**21

    client = engine.connect()
    for ref in ("localhost/assembler/debian-12:latest", "localhost/assembler/base:debian-12"):
        if engine.image_exists(client, ref):
            engine.remove_image(client, ref, force=True)
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text("urls:\n"
                       f"  http://deb.debian.org/debian: {NOWHERE}/debian\n"
                       f"  http://deb.debian.org/debian-security: {NOWHERE}/debian-security\n"
                       f"  https://dl.k8s.io/: {NOWHERE}/k8s/\n  https://github.com/: {NOWHERE}/github/\n")
    out = tmp_path / "out"
    proc = cli("build", "debian-12", "--bundle", str(bundle), "--offline", "--phases", "rootfs,disk",
               "--no-boot-test", "--format", "raw", "--cache-dir", str(tmp_path / "empty-cache"),
               "--output", str(out), env={"ASSEMBLER_MIRRORS": str(mirrors)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    raw = next(o["sha256"] for o in manifest["outputs"] if o["format"] == "raw")
    assert raw == next(o["sha256"] for o in debian12.manifest["outputs"] if o["format"] == "raw")
    assert manifest["rootfs"]["sha256"] == debian12.manifest["rootfs"]["sha256"]
    assert manifest["lock"]["replayed"] is True
    shutil.rmtree(tmp_path / "empty-cache")


def test_offline_without_the_files_fails_clearly(debian12: Built, tmp_path: Path) -> None:
    proc = cli("build", "debian-12", "--offline", "--phases", "rootfs", "--no-boot-test",
               "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "stale" in proc.stdout + proc.stderr and "--bundle" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()
