"""manifest.json read back through one model: a real build's manifest, and hostile or damaged ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from assembler.errors import ConfigError
from assembler.manifest import read_manifest
from assembler.providers.base import BuildOutputs

# What `assembler build debian-13 -f raw -f qcow2 --no-boot-test` wrote (2026-12-05).
REAL = Path(__file__).parent / "data" / "manifest-debian-13.json"


def _out(tmp_path: Path, change: Any = None) -> Path:
    out = tmp_path / "debian-13"
    out.mkdir()
    data = json.loads(REAL.read_text())
    if change is not None:
        change(data)
    (out / "manifest.json").write_text(json.dumps(data))
    return out


def test_a_real_manifest_reads_with_every_record_typed(tmp_path: Path) -> None:
    manifest = read_manifest(_out(tmp_path))
    raw = manifest.output("raw")
    assert raw is not None and raw.path == "debian-13.raw" and manifest.disk is not None
    assert raw.sha256 == manifest.disk.sha256  # the published raw is the disk phase's
    assert {o.format for o in manifest.outputs} == {"rootfs-tar", "lock", "spdx", "cyclonedx", "raw", "qcow2"}
    assert [p.name for p in manifest.phases] == ["rootfs", "disk", "convert:qcow2"]
    assert manifest.phase_key("disk") == manifest.phases[1].key and manifest.phase_key("boot") is None
    assert manifest.disk.firmware == ("bios", "uefi") and [p.role for p in manifest.disk.partitions] == [
        "bios_boot", "esp", "root"]
    assert manifest.oci is not None and manifest.oci.layers[0].step.startswith("mmdebstrap")
    assert manifest.rootfs is not None and manifest.tools["mkfs.vfat"].startswith("mkfs.fat")


@pytest.mark.parametrize("path", ["../../etc/shadow", "/root/.aws/credentials", "..", "sub/dir.raw", ""])
def test_an_output_outside_the_directory_is_refused_before_anything_reads_it(tmp_path: Path, path: str) -> None:
    def hostile(data: dict[str, Any]) -> None:
        data["outputs"][4]["path"] = path

    out = _out(tmp_path, hostile)
    with pytest.raises(ConfigError, match="not a manifest this version of assembler can read") as err:
        read_manifest(out)
    assert "not a file name in the output directory" in err.value.details
    with pytest.raises(ConfigError):
        BuildOutputs.load(out)  # what `assembler publish` reads: nothing is uploaded


def test_damaged_or_missing_manifests_are_one_clear_error(tmp_path: Path) -> None:
    out = _out(tmp_path)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="rebuild"):
        read_manifest(out)
    (out / "manifest.json").write_text(json.dumps({"image": "x", "outputs": [{"format": "raw", "path": "x.raw",
                                                                            "sha256": "not-a-digest"}]}))
    with pytest.raises(ConfigError):
        read_manifest(out)
    shutil.rmtree(out)
    with pytest.raises(ConfigError, match=r"no manifest\.json"):
        read_manifest(out)


def test_fields_a_newer_assembler_adds_are_ignored(tmp_path: Path) -> None:
    def newer(data: dict[str, Any]) -> None:
        data["attestation"] = {"kind": "in-toto"}
        data["outputs"][0]["signature"] = "..."

    assert read_manifest(_out(tmp_path, newer)).output("rootfs-tar") is not None
