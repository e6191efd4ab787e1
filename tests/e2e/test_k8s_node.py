"""The here-buildable Kubernetes node twins (bookworm and trixie, rendered from one template and the
debian_twins table): node preparation proven on a booted guest of each."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli

pytestmark = pytest.mark.e2e

TWIN_STACKS = {
    "debian-12-k8s-node": ("bookworm", r"1\.6\.20"),
    "debian-13-k8s-node": ("trixie", r"1\.7\.24"),
}


@pytest.mark.parametrize("image", sorted(TWIN_STACKS))
def test_k8s_node_twin_builds_and_passes_its_checks(image: str, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = cli("build", image, "--cache-dir", str(shared_cache), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-5000:]
    manifest = json.loads((out / "manifest.json").read_text())
    lock = json.loads((out / f"{image}.lock.json").read_text())
    shutil.rmtree(out)  # several GiB of disks; the manifest and lock hold every result asserted below
    codename, containerd = TWIN_STACKS[image]
    assert any(f"/dists/{codename}/" in index["url"] for index in lock["indexes"])
    runs = manifest["boot"]["runs"]
    assert [r["firmware"] for r in runs] == ["bios"]
    passed = {c["name"] for r in runs for c in r["results"] if c["passed"]}
    assert any("containerd" in n for n in passed)
    assert any("br_netfilter" in n for n in passed)
    failed = [c for r in runs for c in r["results"] if not c["passed"]]
    assert not failed, failed
    assert all(c["passed"] for c in manifest["boot"]["hygiene"])
    versions = {p["name"]: p["version"] for p in lock["packages"]}
    assert re.match(containerd, versions["containerd"]), versions["containerd"]
