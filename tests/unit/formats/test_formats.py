"""Format plugins without qemu-img: golden argv, size rounding, options, profiles, OVF, archives."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tarfile
import uuid
import xml.etree.ElementTree as ET
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import assembler.formats as formats
from assembler.errors import ConfigError, MissingToolError
from assembler.formats import DiskFormat, builtin_formats, load_formats, output_name, resolve
from assembler.formats.base import GIB, MIB, ConvertRequest, detect_format, has_vhd_footer, round_up
from assembler.formats.kubevirt import image_config, image_tag, write_archive, write_layer
from assembler.formats.ova import OvaOptions, OvfDisk, build_ovf, write_ova
from assembler.formats.qemu import normalize_vmdk_cid, patch_footer, vhd_checksum
from tests.helpers import gpt_disk

SRC = Path("/in/disk.raw")
ODD = 100 * MIB + 3584  # sector-aligned, not MiB-aligned
NS = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1",
      "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
      "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"}


def request(dest: str, size: int = 2 * GIB, fmt: str = "raw") -> ConvertRequest:
    return ConvertRequest(source=SRC, source_format=fmt, dest=Path("/w") / dest, image_name="demo",
                          properties={"kubernetes": "1.36.1"}, virtual_size=size, workdir=Path("/w"))


def argv(name: str, req: ConvertRequest, **options: Any) -> list[list[str]]:
    return resolve(name, options).commands(req)


# ------------------------------------------------------------------------------------------- registry


def test_builtin_registry_is_keyed_by_the_enum_and_fresh_each_call() -> None:
    first, second = builtin_formats(), builtin_formats()
    assert list(first) == list(DiskFormat)
    assert all(first[f] is not second[f] for f in DiskFormat)
    assert [p.name for p in first.values()] == [f.value for f in DiskFormat]


@pytest.mark.parametrize(("fmt", "name"), [
    ("raw", "demo.raw"), ("qcow2", "demo.qcow2"), ("vmdk", "demo.vmdk"), ("vhd", "demo.vhd"),
    ("gce", "demo-gce.tar.gz"), ("ova", "demo.ova"), ("kubevirt", "demo-containerdisk.tar"),
    (DiskFormat.GCE, "demo-gce.tar.gz"), ("azure-vhd", "demo.vhd"),
])
def test_output_names(fmt: str, name: str) -> None:
    assert output_name("demo", fmt) == name


def test_unknown_format_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        resolve("vhdx")
    assert "unknown format: vhdx" in str(err.value)
    for valid in ("raw", "qcow2", "vmdk", "vhd", "gce", "ova", "kubevirt", "azure-vhd"):
        assert valid in err.value.resolution


def test_validate_format_names_dedups_and_rejects() -> None:
    names = formats.validate_format_names(["qcow2", "vhd", "qcow2", "azure-vhd"])
    assert names == ["qcow2", "vhd", "azure-vhd"]
    with pytest.raises(ConfigError):
        formats.validate_format_names(["qcow2", "nope"])


def _points(*specs: tuple[str, str]) -> list[EntryPoint]:
    return [EntryPoint(name=n, value=v, group=formats.ENTRY_POINT_GROUP) for n, v in specs]


def test_entry_point_plugins_are_added_but_cannot_replace_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    points = _points(("rawcopy", "assembler.formats.qemu:RawFormat"),
                     ("qcow2", "assembler.formats.gce:GceFormat"))
    monkeypatch.setattr(formats, "entry_points", lambda group: points)
    loaded = load_formats()
    assert loaded["rawcopy"].name == "raw"
    assert loaded["qcow2"].name == "qcow2"  # the builtin stays


def test_broken_entry_point_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "entry_points", lambda group: _points(("x", "no_such_module:Plugin")))
    with pytest.raises(ConfigError, match="failed to load"):
        load_formats()
    monkeypatch.setattr(formats, "entry_points", lambda group: _points(("y", "assembler.formats.base:MIB")))
    with pytest.raises(ConfigError, match="not a FormatPlugin"):
        load_formats()


# ------------------------------------------------------------------------------------------- golden argv


def test_raw_argv() -> None:
    assert argv("raw", request("demo.raw", fmt="qcow2")) == [
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "/in/disk.raw", "/w/demo.raw"]]


def test_qcow2_argv_default_and_compressed() -> None:
    req = request("demo.qcow2")
    assert argv("qcow2", req) == [["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o",
                                   "compat=1.1,cluster_size=65536", "/in/disk.raw", "/w/demo.qcow2"]]
    assert argv("qcow2", req, compress=True, compression_type="zstd", out_of_order=True) == [
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-W", "-o",
         "compat=1.1,cluster_size=65536,compression_type=zstd", "/in/disk.raw", "/w/demo.qcow2"]]
    assert argv("qcow2-compressed", req)[0][6] == "-c"


def test_vmdk_argv_is_stream_optimized_and_pads_odd_sizes() -> None:
    opts = "subformat=streamOptimized,adapter_type=lsilogic"
    assert argv("vmdk", request("demo.vmdk")) == [
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", opts, "/in/disk.raw", "/w/demo.vmdk"]]
    assert argv("vmdk", request("demo.vmdk", size=ODD, fmt="qcow2")) == [
        ["qemu-img", "create", "-q", "-f", "raw", "/w/padded.raw", str(101 * MIB)],
        ["qemu-img", "convert", "-n", "--target-is-zero", "-f", "qcow2", "-O", "raw", "/in/disk.raw",
         "/w/padded.raw"],
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", opts, "/w/padded.raw", "/w/demo.vmdk"]]
    assert argv("vmdk", request("demo.vmdk"), hwversion=13)[0][7].endswith(",hwversion=13")


@pytest.mark.parametrize(("size", "rounded"),
                         [(2 * GIB, 2 * GIB), (ODD, 101 * MIB), (1, MIB), (100000000, 96 * MIB)])
def test_vhd_argv_rounds_up_to_whole_mib(size: int, rounded: int) -> None:
    assert argv("vhd", request("demo.vhd", size=size)) == [
        ["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed,force_size=on", "/w/demo.vhd",
         str(rounded)],
        ["qemu-img", "convert", "-n", "--target-is-zero", "-f", "raw", "-O", "vpc", "/in/disk.raw",
         "/w/demo.vhd"]]


@pytest.mark.parametrize(("size", "rounded"), [(GIB, GIB), (GIB + 512, 2 * GIB), (ODD, GIB)])
def test_gce_argv_rounds_up_to_whole_gib(size: int, rounded: int) -> None:
    req = request("demo-gce.tar.gz", size=size)
    assert argv("gce", req, compressor="gzip", level=6) == [
        ["qemu-img", "create", "-q", "-f", "raw", "/w/disk.raw", str(rounded)],
        ["qemu-img", "convert", "-n", "--target-is-zero", "-f", "raw", "-O", "raw", "/in/disk.raw",
         "/w/disk.raw"],
        ["tar", "--format=oldgnu", "--sparse", "--mtime=@1700000000", "--owner=0", "--group=0",
         "--numeric-owner", "--use-compress-program=gzip -6 -n", "-cf", "/w/demo-gce.tar.gz", "-C", "/w",
         "disk.raw"]]


def test_ova_and_kubevirt_argv() -> None:
    assert argv("ova", request("demo.ova")) == [
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
         "subformat=streamOptimized,adapter_type=lsilogic", "/in/disk.raw", "/w/demo-disk1.vmdk"]]
    assert argv("kubevirt", request("demo-containerdisk.tar")) == [
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", "/in/disk.raw",
         "/w/demo.qcow2"]]
    assert argv("kubevirt", request("demo-containerdisk.tar"), disk_format="raw") == [
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", "/in/disk.raw", "/w/demo.raw"]]


def test_round_up() -> None:
    assert [round_up(v, MIB) for v in (0, 1, MIB, MIB + 1)] == [0, MIB, MIB, 2 * MIB]


# ------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(("fmt", "options", "needle"), [
    ("qcow2", {"compresss": True}, "compress"),
    ("qcow2", {"cluster_size": 1000}, "power of two"),
    ("vhd", {"subformat": "dynamicc"}, "subformat"),
    ("gce", {"level": 0}, "level"),
    ("ova", {"firmware": "uefi"}, "firmware"),
    ("kubevirt", {"repository": "Not A Repo"}, "repository"),
])
def test_invalid_options_are_config_errors(fmt: str, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(fmt, options)
    assert f"invalid options for format {fmt}" in err.value.brief
    assert needle in err.value.details
    assert "valid options" in err.value.resolution


def test_repository_profiles_are_valid() -> None:
    profiles = formats.load_profiles()
    assert {"azure-vhd", "gce", "ova", "qcow2-compressed"} <= set(profiles)
    assert profiles["azure-vhd"].format == "vhd"


def test_bad_profiles_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("format: vhd\noptions: {subformat: vhdx}\n")
    with pytest.raises(ConfigError, match="invalid options for format vhd"):
        formats.load_profiles(tmp_path)
    (tmp_path / "x.yaml").write_text("format: floppy\n")
    with pytest.raises(ConfigError, match=r"x\.yaml names an unknown format"):
        formats.load_profiles(tmp_path)
    (tmp_path / "x.yaml").write_text("format: vhd\nsize: 3\n")
    with pytest.raises(ConfigError, match="invalid format profile"):
        formats.load_profiles(tmp_path)


def test_explicit_options_override_the_profile() -> None:
    plugin = resolve("gce", {"level": 1})
    assert plugin.options.model_dump()["level"] == 1


# ------------------------------------------------------------------------------------------- errors


def test_missing_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such disk"):
        formats.convert(tmp_path / "absent.raw", "qcow2", tmp_path, image_name="demo")


def test_invalid_image_name(tmp_path: Path) -> None:
    (tmp_path / "d.raw").write_bytes(b"\0" * 512)
    with pytest.raises(ConfigError, match="invalid image name"):
        formats.convert(tmp_path / "d.raw", "qcow2", tmp_path, image_name="a/b")


def test_missing_qemu_img_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, **kw: None if name == "qemu-img" else real_which(name, **kw))
    (tmp_path / "d.raw").write_bytes(b"\0" * 512)
    req = ConvertRequest(tmp_path / "d.raw", "raw", tmp_path / "out" / "d.vhd", "d", virtual_size=512)
    with pytest.raises(MissingToolError) as err:
        resolve("vhd").convert(req)
    assert "qemu-utils" in err.value.resolution
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------------------- VHD footer


def fixed_vhd_footer(size: int) -> bytes:
    footer = bytearray(512)
    footer[:8] = b"conectix"
    # features, version, data offset (none: fixed), timestamp, creator app/version/host
    struct.pack_into(">IIQI4sII", footer, 8, 2, 0x10000, 2**64 - 1, 12345, b"qem2", 0x50003, 0x5769326B)
    struct.pack_into(">QQ", footer, 40, size, size)
    struct.pack_into(">I", footer, 60, 2)  # disk type: fixed
    footer[68:84] = uuid.uuid4().bytes
    struct.pack_into(">I", footer, 64, vhd_checksum(bytes(footer)))
    return bytes(footer)


def test_detect_format_finds_a_fixed_vhd_footer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import assembler.formats.base as base

    # What qemu-img reports for a fixed VHD:
    monkeypatch.setattr(base, "qemu_img_info", lambda path, fmt=None: {"format": "raw"})
    vhd, raw = tmp_path / "d.vhd", tmp_path / "d.raw"
    vhd.write_bytes(b"\1" * MIB + fixed_vhd_footer(MIB))
    raw.write_bytes(b"\1" * MIB)
    assert has_vhd_footer(vhd) and not has_vhd_footer(raw)
    assert detect_format(vhd) == "vpc"
    assert detect_format(raw) == "raw"
    (tmp_path / "tiny").write_bytes(b"conectix")
    assert detect_format(tmp_path / "tiny") == "raw"


def test_vhd_footer_is_pinned_and_keeps_a_valid_checksum() -> None:
    footer = fixed_vhd_footer(MIB)
    disk_id = uuid.UUID(int=7)
    patched = patch_footer(footer, 1700000000, disk_id)
    assert struct.unpack_from(">I", patched, 24)[0] == 1700000000 - 946684800
    assert patched[68:84] == disk_id.bytes
    assert struct.unpack_from(">I", patched, 64)[0] == vhd_checksum(patched)
    assert patched[:24] == footer[:24] and patched[28:64] == footer[28:64]
    assert patch_footer(footer, 1700000000, disk_id) == patched


@pytest.mark.parametrize("cid", ["e2bf35", "0807ef1b", "7"])
def test_vmdk_cid_is_pinned_whatever_its_printed_width(tmp_path: Path, cid: str) -> None:
    header = bytearray(512)
    header[:4] = b"KDMV"
    struct.pack_into("<QQ", header, 28, 1, 2)  # descriptor at sector 1, two sectors long
    descriptor = f"# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID=ffffffff\n".encode()
    path = tmp_path / "x.vmdk"
    path.write_bytes(bytes(header) + descriptor.ljust(1024, b"\0") + b"grains")
    normalize_vmdk_cid(path, "0badc0de")
    data = path.read_bytes()
    assert len(data) == 512 + 1024 + 6 and data.endswith(b"grains")
    text = data[512:1536].rstrip(b"\0").decode()
    assert text == "# Disk DescriptorFile\nversion=1\nCID=0badc0de\nparentCID=ffffffff\n"


# ------------------------------------------------------------------------------------------- OVF / OVA


def ovf_tree(properties: dict[str, str] | None = None, **options: Any) -> ET.Element:
    disk = OvfDisk("demo-disk1.vmdk", 12345, 101 * MIB, 4096)
    text = build_ovf("demo", disk, OvaOptions(**options), properties or {"kubernetes": "1.36.1"})
    return ET.fromstring(text.encode())


def test_ovf_envelope_structure() -> None:
    root = ovf_tree({"kubernetes": "1.36.1", "containerd": "2.3.2", "note with space": "a<b&c"})
    assert root.tag == f"{{{NS['ovf']}}}Envelope"
    file_ = root.find("ovf:References/ovf:File", NS)
    assert file_ is not None
    assert file_.get(f"{{{NS['ovf']}}}href") == "demo-disk1.vmdk"
    assert file_.get(f"{{{NS['ovf']}}}size") == "12345"
    disk = root.find("ovf:DiskSection/ovf:Disk", NS)
    assert disk is not None
    assert disk.get(f"{{{NS['ovf']}}}capacity") == "101"
    assert disk.get(f"{{{NS['ovf']}}}capacityAllocationUnits") == "byte * 2^20"
    assert disk.get(f"{{{NS['ovf']}}}fileRef") == file_.get(f"{{{NS['ovf']}}}id")
    assert disk.get(f"{{{NS['ovf']}}}format", "").endswith("#streamOptimized")
    assert root.find("ovf:NetworkSection/ovf:Network", NS) is not None
    system = root.find("ovf:VirtualSystem", NS)
    assert system is not None
    assert system.find("ovf:OperatingSystemSection", NS) is not None
    props = {p.get(f"{{{NS['ovf']}}}key"): p.get(f"{{{NS['ovf']}}}value")
             for p in system.findall("ovf:ProductSection/ovf:Property", NS)}
    assert props == {"containerd": "2.3.2", "kubernetes": "1.36.1", "note_with_space": "a<b&c"}


def test_ovf_virtual_hardware() -> None:
    root = ovf_tree(cpus=4, memory_mib=4096, firmware="efi")
    hw = root.find("ovf:VirtualSystem/ovf:VirtualHardwareSection", NS)
    assert hw is not None
    system_type = hw.find("ovf:System/vssd:VirtualSystemType", NS)
    assert system_type is not None and system_type.text == "vmx-13"
    items = {i.findtext("rasd:ResourceType", namespaces=NS): i for i in hw.findall("ovf:Item", NS)}
    assert set(items) == {"3", "4", "5", "6", "10", "17"}  # cpu, memory, ide, scsi, nic, disk
    assert items["3"].findtext("rasd:VirtualQuantity", namespaces=NS) == "4"
    assert items["4"].findtext("rasd:VirtualQuantity", namespaces=NS) == "4096"
    assert items["17"].findtext("rasd:HostResource", namespaces=NS) == "ovf:/disk/vmdisk1"
    assert items["17"].findtext("rasd:Parent", namespaces=NS) == items["6"].findtext("rasd:InstanceID",
                                                                                      namespaces=NS)
    for item in items.values():  # CIM requires rasd elements in alphabetical order
        names = [child.tag.split("}")[1] for child in item if child.tag.startswith(f"{{{NS['rasd']}}}")]
        assert names == sorted(names)
    firmware = [c for c in hw if c.tag.endswith("}Config")]
    assert [c.get("{http://www.vmware.com/schema/ovf}value") for c in firmware] == ["efi"]


def test_ova_tar_is_ustar_ordered_and_reproducible(tmp_path: Path) -> None:
    members = []
    for name, data in (("demo.ovf", b"<x/>"), ("demo.mf", b"SHA256"), ("demo-disk1.vmdk", b"KDMV" * 300)):
        (tmp_path / name).write_bytes(data)
        members.append(tmp_path / name)
    write_ova(tmp_path / "a.ova", members, 1700000000)
    write_ova(tmp_path / "b.ova", members, 1700000000)
    assert (tmp_path / "a.ova").read_bytes() == (tmp_path / "b.ova").read_bytes()
    assert (tmp_path / "a.ova").read_bytes()[257:263] == b"ustar\0"
    with tarfile.open(tmp_path / "a.ova") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["demo.ovf", "demo.mf", "demo-disk1.vmdk"]
    assert {(i.uid, i.gid, i.mtime, i.mode) for i in infos} == {(0, 0, 1700000000, 0o644)}


# ------------------------------------------------------------------------------------------- kubevirt


def test_containerdisk_archive_layout_and_determinism(tmp_path: Path) -> None:
    disk = tmp_path / "demo.qcow2"
    disk.write_bytes(b"QFI\xfb" + b"\0" * 1020)
    archives = []
    for run in ("a", "b"):
        layer = tmp_path / f"layer-{run}.tar"
        write_layer(layer, disk, 1700000000)
        layer_hex = hashlib.sha256(layer.read_bytes()).hexdigest()
        config = image_config(f"sha256:{layer_hex}", 1700000000, {"k": "v"})
        tag = image_tag("localhost/assembler", "Demo", hashlib.sha256(config).hexdigest())
        write_archive(tmp_path / f"{run}.tar", layer, layer_hex, config, tag, 1700000000)
        archives.append((tmp_path / f"{run}.tar").read_bytes())
    assert archives[0] == archives[1]
    assert tag.startswith("localhost/assembler/demo-containerdisk:") and len(tag.rsplit(":", 1)[1]) == 12
    with tarfile.open(tmp_path / "a.tar") as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == [tag]
        config_doc = json.loads(outer.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
        assert config_doc["created"] == "2023-11-14T22:13:20Z"
        assert config_doc["rootfs"]["diff_ids"] == [f"sha256:{layer_hex}"]
    with tarfile.open(tmp_path / "layer-a.tar") as layer_tar:
        infos = {i.name: i for i in layer_tar.getmembers()}
    assert set(infos) == {"disk", "disk/demo.qcow2"}
    assert all((i.uid, i.gid) == (107, 107) for i in infos.values())
    assert infos["disk"].isdir() and infos["disk/demo.qcow2"].mode == 0o644


def test_an_arm64_disk_gives_an_arm64_containerdisk(tmp_path: Path) -> None:
    """The image config names the disk's architecture, read from its GPT when the caller does not say it
    (`assembler convert DISK --format kubevirt`): a node pulls the containerDisk of its own architecture."""
    configs = {}
    for arch in ("amd64", "arm64"):
        disk = gpt_disk(tmp_path / f"{arch}.raw", arch)
        result = formats.convert(disk, "kubevirt", tmp_path / f"{arch}.tar", image_name=arch,
                                 options={"load": False}, source_date_epoch=1_700_000_000)
        with tarfile.open(result.path) as outer:
            manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
            configs[arch] = json.loads(outer.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
    assert configs["amd64"]["architecture"] == "amd64" and configs["arm64"]["architecture"] == "arm64"
    told = formats.convert(tmp_path / "amd64.raw", "kubevirt", tmp_path / "told.tar", image_name="told",
                           options={"load": False}, architecture="arm64")
    with tarfile.open(told.path) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert json.loads(outer.extractfile(manifest[0]["Config"]).read())["architecture"] == "arm64"  # type: ignore[union-attr]


def test_image_tag_rejects_names_a_registry_would() -> None:
    with pytest.raises(ConfigError):
        image_tag("localhost/assembler", "bad..name", "0" * 64)
