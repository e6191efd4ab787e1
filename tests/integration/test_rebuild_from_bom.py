"""`assembler rebuild`: build a small fixture with the CLI, then recreate it from nothing but its BOM
(no phase cache, no engine layer cache) and get the same rootfs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assembler import bom
from tests.helpers import cli

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).parent / "fixtures" / "rebuild"


def test_rebuild_from_the_bom_gives_the_same_rootfs(debian_base: str, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    built = cli("build", str(FIXTURE), "--phases", "rootfs,disk", "--no-boot-test", "--format", "raw",
                "--cache-dir", str(shared_cache), "--output", str(out))
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    doc = bom.load_spdx(out / "rebuild.spdx.json")
    recorded = bom.build_inputs_of(doc)
    assert recorded is not None and recorded["image"] == "rebuild"
    # The effective lock rides along although the directory has none: the rebuild replays that mirror state.
    assert [e["path"] for e in recorded["context"]] == ["Containerfile", "files", "files/hello.sh",
                                                        "image.lock.json", "image.yaml"]
    assert recorded["build_args"] == {"GREETING": "hi"} and recorded["source_date_epoch"] == 1747699200
    assert recorded["base"]["name"] == "debian-12" and recorded["base"]["declared"]
    assert bom.validate_spdx(doc) == []

    again = tmp_path / "again"
    rebuilt = cli("rebuild", str(out / "rebuild.spdx.json"), "--no-boot-test", "--no-cache", "--format", "raw",
                  "--cache-dir", str(shared_cache), "--output", str(again), "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    report = json.loads(rebuilt.stdout)
    assert report["verified"] and report["differences"] == []
    assert report["actual"]["rootfs_sha256"] == manifest["rootfs"]["sha256"]
    new_manifest = json.loads((again / "manifest.json").read_text())
    assert new_manifest["rootfs"]["sha256"] == manifest["rootfs"]["sha256"]
    assert all(not p["cached"] for p in new_manifest["phases"])  # really rebuilt, not reused
    assert (again / "rebuild-rootfs.tar").read_bytes() == (out / "rebuild-rootfs.tar").read_bytes()
    # The rebuilt BOM carries the same inputs: a rebuild can itself be rebuilt.
    assert bom.build_inputs_of(bom.load_spdx(again / "rebuild.spdx.json")) == recorded


def test_rebuild_reports_a_different_rootfs(debian_base: str, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    built = cli("build", str(FIXTURE), "--phases", "rootfs,disk", "--no-boot-test", "--format", "raw",
                "--cache-dir", str(shared_cache), "--output", str(out))
    assert built.returncode == 0, built.stderr[-3000:]
    doc = bom.load_spdx(out / "rebuild.spdx.json")
    # A BOM whose rootfs claim is wrong: the rebuild (cached, so fast) must say what differs.
    facts = bom.summary(doc) | {"rootfs_sha256": "0" * 64}
    doc["comment"] = "assembler: " + json.dumps(facts, sort_keys=True)
    tampered = bom.write_document(doc, tmp_path / "tampered.spdx.json")
    result = cli("rebuild", str(tampered), "--no-boot-test", "--cache", "--format", "raw",
                 "--cache-dir", str(shared_cache), "--output", str(tmp_path / "again"))
    assert result.returncode == 1
    assert "differs from its BOM" in result.stderr and "rootfs sha256: BOM" in result.stderr
    report = json.loads((tmp_path / "again" / "rebuild.json").read_text())
    assert not report["verified"] and report["differences"][0].startswith("rootfs sha256")
