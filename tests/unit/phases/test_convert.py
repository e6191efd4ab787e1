"""The convert phase: its key follows the format's effective options, and it really converts (qemu-img on a
small raw disk made here, the disk phase stood in for by one that writes it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import assembler.formats as formats
from assembler.config import ImageConfig, ImageSpec
from assembler.errors import ConfigError
from assembler.fsutil import sha256_file
from assembler.phases.convert import ConvertPhase
from assembler.pipeline import Action, BuildRun, Phase, execute_plan, make_plan
from assembler.store import Store
from tests.helpers import REPO

MIB = 1 << 20


class RawDisk(Phase):
    """The disk phase's entry as convert reads it: disk.raw, 2 MiB with data at both ends and a hole between."""

    name = "disk"
    kind = "disk"

    def material(self) -> dict[str, Any]:
        return {"disk": "fixed"}

    def execute(self, out: Path) -> dict[str, Any]:
        with (out / "disk.raw").open("wb") as disk:
            disk.write(b"\xeb\x63\x90" + bytes(range(256)) * 16)
            disk.seek(2 * MIB - 512)
            disk.write(b"END!" * 128)
        return {}


@pytest.fixture()
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BuildRun:
    profiles = tmp_path / "formats"
    shutil.copytree(REPO / "formats", profiles)
    monkeypatch.setattr(formats, "formats_dir", lambda: profiles)
    spec = ImageSpec(name="img", context=tmp_path, containerfile=tmp_path / "Containerfile",
                     config=ImageConfig(properties={"os": "debian-13"}))
    return BuildRun(spec=spec, store=Store(tmp_path / "cache"), output_dir=tmp_path / "out",
                    formats=["raw", "qcow2"])


def _info(path: Path) -> dict[str, Any]:
    done = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True,
                          check=True)
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def test_each_format_is_its_own_labelled_phase(ctx: BuildRun) -> None:
    disk = RawDisk(ctx)
    phase = ConvertPhase(ctx, (disk,), "vmdk")
    assert (phase.label, phase.kind, phase.fmt) == ("convert:vmdk", "convert", "vmdk")
    assert phase.inputs == (disk,)


def test_the_material_holds_the_profiles_options_over_the_plugins_defaults(ctx: BuildRun) -> None:
    disk = RawDisk(ctx)
    plain = ConvertPhase(ctx, (disk,), "qcow2").material()
    compressed = ConvertPhase(ctx, (disk,), "qcow2-compressed").material()
    assert plain["options"]["compress"] is False
    assert compressed["options"]["compress"] is True
    assert compressed["options"]["compression_type"] == "zlib"
    assert {k: v for k, v in compressed["options"].items() if k not in ("compress", "compression_type")} == \
        {k: v for k, v in plain["options"].items() if k not in ("compress", "compression_type")}
    assert compressed["format"] == "qcow2-compressed"  # the profile's name, so its key is not plain qcow2's
    assert plain["image"] == "img" and plain["properties"] == {"os": "debian-13"}
    assert plain["qemu-img"].startswith("qemu-img version")


def test_an_option_edit_in_a_profile_changes_only_that_formats_key(ctx: BuildRun) -> None:
    disk = RawDisk(ctx)

    def keys() -> dict[str, str]:
        return {fmt: ConvertPhase(ctx, (disk,), fmt).key() for fmt in ("qcow2", "qcow2-compressed")}

    before = keys()
    profile = formats.formats_dir() / "qcow2-compressed.yaml"
    profile.write_text(profile.read_text().replace("compression_type: zlib", "compression_type: zstd"))
    after = keys()
    assert before["qcow2"] == after["qcow2"]
    assert before["qcow2-compressed"] != after["qcow2-compressed"]


def test_the_image_properties_are_in_the_key(ctx: BuildRun) -> None:
    """OVF ProductSection, GCE labels...: the properties end up inside some artefacts."""
    disk = RawDisk(ctx)
    before = ConvertPhase(ctx, (disk,), "ova").key()
    ctx.spec.config.properties["os"] = "debian-12"
    assert ConvertPhase(ctx, (disk,), "ova").key() != before


def test_an_unknown_format_is_one_clear_error(ctx: BuildRun) -> None:
    with pytest.raises(ConfigError) as raised:
        ConvertPhase(ctx, (RawDisk(ctx),), "qcow3").key()
    assert raised.value.brief == "unknown format: qcow3"
    assert "qcow2-compressed" in raised.value.resolution  # profiles are offered with the formats


def test_the_phase_converts_the_disk_and_is_reused_after(ctx: BuildRun) -> None:
    disk = RawDisk(ctx)
    convert = ConvertPhase(ctx, (disk,), "qcow2")
    plan = make_plan(ctx, [disk, convert])
    assert [s.action for s in plan] == [Action.RUN, Action.RUN]
    execute_plan(ctx, plan)

    entry = ctx.results["convert:qcow2"]
    out = entry.meta["output"]
    qcow2 = entry.file("img.qcow2")
    assert out == {"format": "qcow2", "file": "img.qcow2", "sha256": sha256_file(qcow2),
                   "virtual_size": 2 * MIB, "file_size": qcow2.stat().st_size}
    info = _info(qcow2)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 2 * MIB)
    raw = ctx.results["disk"].file("disk.raw")
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(qcow2)],
                          capture_output=True).returncode == 0  # the same guest-visible bytes

    [artefact] = convert.artefacts(entry)
    assert (artefact.source, artefact.name, artefact.key, artefact.fmt, artefact.sha256) == \
        (qcow2, "img.qcow2", entry.key, "qcow2", out["sha256"])

    again = make_plan(ctx, [RawDisk(ctx), ConvertPhase(ctx, (RawDisk(ctx),), "qcow2")])
    assert [s.action for s in again] == [Action.CACHED, Action.CACHED]


def test_a_profile_converts_with_its_options_into_the_formats_file_name(ctx: BuildRun, tmp_path: Path) -> None:
    disk = RawDisk(ctx)
    execute_plan(ctx, make_plan(ctx, [disk]))
    plain_dir, compressed_dir = tmp_path / "plain", tmp_path / "compressed"
    plain_dir.mkdir()
    compressed_dir.mkdir()
    plain = ConvertPhase(ctx, (disk,), "qcow2").execute(plain_dir)
    compressed = ConvertPhase(ctx, (disk,), "qcow2-compressed").execute(compressed_dir)
    assert compressed["output"]["file"] == "img.qcow2"  # a profile of qcow2 keeps qcow2's extension
    assert compressed["output"]["format"] == "qcow2-compressed"
    assert compressed["output"]["sha256"] != plain["output"]["sha256"]  # compressed clusters
    assert _info(compressed_dir / "img.qcow2")["format"] == "qcow2"


def test_the_conversion_is_reproducible(ctx: BuildRun, tmp_path: Path) -> None:
    disk = RawDisk(ctx)
    execute_plan(ctx, make_plan(ctx, [disk]))
    digests = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        digests.append(ConvertPhase(ctx, (disk,), "vmdk").execute(tmp_path / name)["output"]["sha256"])
    assert digests[0] == digests[1]  # vmdk: qemu-img's random content ID is normalised


def test_the_images_format_options_are_used_and_keyed(ctx: BuildRun, tmp_path: Path) -> None:
    """image.yaml's format_options: over the format's defaults, in the key, and what qemu-img writes."""
    disk = RawDisk(ctx)
    execute_plan(ctx, make_plan(ctx, [disk]))
    plain_key = ConvertPhase(ctx, (disk,), "qcow2").key()
    ctx.spec.config.format_options["qcow2"] = {"compress": True, "compression_type": "zstd"}
    phase = ConvertPhase(ctx, (disk,), "qcow2")
    assert phase.material()["options"]["compression_type"] == "zstd" and phase.key() != plain_key
    (tmp_path / "zstd").mkdir()
    phase.execute(tmp_path / "zstd")
    info = _info(tmp_path / "zstd" / "img.qcow2")
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    ctx.spec.config.format_options["qcow2"] = {"compression_type": "lz4"}
    with pytest.raises(ConfigError) as raised:
        ConvertPhase(ctx, (disk,), "qcow2").key()
    assert raised.value.brief == "invalid options for format qcow2" and "compression_type" in raised.value.resolution


def test_format_options_are_checked_before_anything_is_built() -> None:
    """A known format with valid options passes (listed in formats: or not: --format may ask for it); an
    unknown name or option is one error naming image.yaml's key."""
    assert formats.validate_format_names(["raw"], {"qcow2": {"compress": True}}) == ["raw"]
    with pytest.raises(ConfigError) as raised:
        formats.validate_format_names(["raw"], {"qcwo2": {"compress": True}})
    assert raised.value.brief == "format_options.qcwo2 in image.yaml: unknown format: qcwo2"
    with pytest.raises(ConfigError) as raised:
        formats.validate_format_names(["raw"], {"qcow2": {"compresss": True}})
    assert raised.value.brief == "format_options.qcow2 in image.yaml: invalid options for format qcow2"
