"""The here-buildable Kubernetes node twin: node preparation proven on a booted guest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli

pytestmark = pytest.mark.e2e


def test_debian_12_k8s_node_builds_and_passes_its_checks(shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = cli("build", "debian-12-k8s-node", "--cache-dir", str(shared_cache), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-5000:]
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)  # several GiB of disks; the manifest holds every result asserted below
    runs = manifest["boot"]["runs"]
    assert [r["firmware"] for r in runs] == ["bios"]
    names = {c["name"] for r in runs for c in r["results"] if c["passed"]}
    assert any("containerd" in n for n in names)
    assert any("br_netfilter" in n for n in names)
    assert all(c["passed"] for r in runs for c in r["results"])
    assert all(c["passed"] for c in manifest["boot"]["hygiene"])
