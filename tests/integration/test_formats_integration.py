"""Every format against real qemu-img, GNU tar and the container engine, on small GPT + ext4 disks."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from assembler import formats
from assembler.errors import ConfigError, ToolError
from assembler.formats import FormatResult, detect_format
from assembler.formats.base import GIB, MIB
from tests.helpers import scratch_dir

pytestmark = pytest.mark.integration

ODD_SIZE = 100 * MIB + 3584  # whole sectors, not whole MiB
PROPS = {"kubernetes": "1.36.1", "containerd": "2.3.2"}
OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"


def sh(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout


def info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    fmt_args = ["-f", fmt] if fmt else []
    result: dict[str, Any] = json.loads(sh("qemu-img", "info", "--output=json", *fmt_args, path))
    return result


def same_content(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    """qemu-img compare: identical guest-visible bytes (a larger image must be zero beyond the smaller)."""
    proc = subprocess.run(["qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, str(a), str(b)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def make_disk(path: Path, size: int, tree: Path) -> Path:
    """A sparse GPT disk with one small ext4 partition filled from `tree` in one step (mke2fs -d)."""
    sh("truncate", "-s", str(size), path)
    sh("sgdisk", "-n", "1:2048:+40M", "-t", "1:8300", path)
    fs_uuid = "00000000-0000-4000-8000-000000000000"
    sh("mke2fs", "-q", "-t", "ext4", "-d", tree, "-E", f"offset={MIB}", "-U", fs_uuid, path, "40M")
    return path


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with scratch_dir(tmp_path_factory, "disks") as root:
        tree = root / "tree"
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "hostname").write_text("demo\n")
        (tree / "blob").write_bytes(hashlib.sha256(b"seed").digest() * 65536)  # 2 MiB of data
        yield {"even": make_disk(root / "even.raw", 100 * MIB, tree),
               "odd": make_disk(root / "odd.raw", ODD_SIZE, tree)}


def convert(src: Path, fmt: str, out: Path, **options: Any) -> FormatResult:
    return formats.convert(src, fmt, out, image_name="demo", properties=PROPS, options=options or None)


# ----------------------------------------------------------------------------------------- qemu formats


def test_raw_and_qcow2_keep_the_bytes_and_stay_sparse(disks: dict[str, Path], tmp_path: Path) -> None:
    src = disks["odd"]
    raw = convert(src, "raw", tmp_path)
    assert raw.path == tmp_path / "demo.raw" and raw.virtual_size == ODD_SIZE
    assert raw.disk_usage < 10 * MIB and same_content(src, "raw", raw.path, "raw")
    qcow2 = convert(src, "qcow2", tmp_path)
    assert info(qcow2.path)["format"] == "qcow2"
    sh("qemu-img", "check", qcow2.path)
    assert same_content(src, "raw", qcow2.path, "qcow2")
    assert qcow2.file_size < 10 * MIB  # zero clusters are not written
    packed = convert(src, "qcow2", tmp_path / "packed.qcow2", compress=True)
    assert packed.file_size < qcow2.file_size and same_content(src, "raw", packed.path, "qcow2")


def test_vmdk_is_stream_optimized_mib_aligned_reproducible(disks: dict[str, Path], tmp_path: Path) -> None:
    first = convert(disks["odd"], "vmdk", tmp_path / "a.vmdk")
    second = convert(disks["odd"], "vmdk", tmp_path / "b.vmdk")
    details = info(first.path)
    assert details["format"] == "vmdk"
    assert details["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert details["virtual-size"] == 101 * MIB == first.virtual_size
    assert same_content(disks["odd"], "raw", first.path, "vmdk")
    # Same bytes apart from the extent's file name, which VMDK embeds in its descriptor.
    assert first.path.read_bytes().replace(b'"a.vmdk"', b'"b.vmdk"') == second.path.read_bytes()
    assert b'SPARSE "a.vmdk"' in first.path.read_bytes()[:4096]  # the final name, not a temporary one


@pytest.mark.parametrize("which", ["even", "odd"])
def test_vhd_is_azure_ready(disks: dict[str, Path], tmp_path: Path, which: str) -> None:
    result = convert(disks[which], "vhd", tmp_path)
    details = info(result.path, "vpc")
    assert details["format"] == "vpc"
    assert details["virtual-size"] % MIB == 0
    assert details["virtual-size"] == (100 * MIB if which == "even" else 101 * MIB) == result.virtual_size
    assert result.file_size == details["virtual-size"] + 512
    assert result.path.read_bytes()[-512:][:8] == b"conectix"
    assert result.path.read_bytes()[-512:][60:64] == b"\0\0\0\2"  # disk type: fixed
    assert detect_format(result.path) == "vpc"
    assert same_content(disks[which], "raw", result.path, "vpc")
    again = convert(disks[which], "azure-vhd", tmp_path / "again.vhd")
    assert again.sha256 == result.sha256  # footer time stamp and UUID are pinned


def test_round_trip_raw_qcow2_vhd_keeps_the_bytes(disks: dict[str, Path], tmp_path: Path) -> None:
    qcow2 = convert(disks["even"], "qcow2", tmp_path)
    assert detect_format(qcow2.path) == "qcow2"
    vhd = formats.convert(qcow2.path, "vhd", tmp_path / "back.vhd", image_name="demo")
    raw = formats.convert(vhd.path, "raw", tmp_path / "back.raw", image_name="demo")
    assert same_content(disks["even"], "raw", vhd.path, "vpc")
    assert same_content(disks["even"], "raw", raw.path, "raw")
    assert raw.sha256 == hashlib.sha256(disks["even"].read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------- packagings


def test_gce_tarball(disks: dict[str, Path], tmp_path: Path) -> None:
    result = convert(disks["odd"], "gce", tmp_path, compressor="gzip")
    assert result.path.name == "demo-gce.tar.gz" and result.virtual_size == GIB
    raw_tar = gzip.decompress(result.path.read_bytes())
    header = raw_tar[:512]
    assert header[:8] == b"disk.raw"
    assert header[257:265] == b"ustar  \0"  # oldgnu magic
    assert header[156:157] == b"S"  # GNU sparse member
    with tarfile.open(fileobj=io.BytesIO(raw_tar)) as tar:
        (member,) = tar.getmembers()
    assert member.name == "disk.raw" and member.size == GIB and member.size % GIB == 0
    assert (member.uid, member.gid) == (0, 0)
    sh("tar", "-xSzf", result.path, "-C", tmp_path)
    assert same_content(disks["odd"], "raw", tmp_path / "disk.raw", "raw")
    again = convert(disks["odd"], "gce", tmp_path / "again-gce.tar.gz", compressor="gzip")
    assert again.sha256 == result.sha256


def test_ova(disks: dict[str, Path], tmp_path: Path) -> None:
    result = convert(disks["odd"], "ova", tmp_path)
    with tarfile.open(result.path) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == ["demo.ovf", "demo.mf", "demo-disk1.vmdk"]
        assert all(m.uid == 0 and m.gid == 0 for m in members)
        ovf = tar.extractfile("demo.ovf").read()  # type: ignore[union-attr]
        manifest = tar.extractfile("demo.mf").read().decode()  # type: ignore[union-attr]
        tar.extract("demo-disk1.vmdk", tmp_path)
    assert result.path.read_bytes()[257:263] == b"ustar\0"
    root = ET.fromstring(ovf)
    (file_,) = root.iter(f"{OVF}File")
    assert file_.get(f"{OVF}href") == "demo-disk1.vmdk"
    assert int(file_.get(f"{OVF}size", "0")) == members[2].size
    (disk,) = root.iter(f"{OVF}Disk")
    assert disk.get(f"{OVF}capacity") == "101"
    assert 2 * MIB < int(disk.get(f"{OVF}populatedSize", "0")) < 10 * MIB
    props = {p.get(f"{OVF}key"): p.get(f"{OVF}value") for p in root.iter(f"{OVF}Property")}
    assert props == PROPS
    vmdk = tmp_path / "demo-disk1.vmdk"
    assert f"SHA256(demo-disk1.vmdk)= {hashlib.sha256(vmdk.read_bytes()).hexdigest()}" in manifest
    assert f"SHA256(demo.ovf)= {hashlib.sha256(ovf).hexdigest()}" in manifest
    assert info(vmdk)["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert same_content(disks["odd"], "raw", vmdk, "vmdk")
    assert convert(disks["odd"], "ova", tmp_path / "again.ova").sha256 == result.sha256


def test_kubevirt_containerdisk(disks: dict[str, Path], tmp_path: Path,
                                engine_client: docker.DockerClient) -> None:
    result = convert(disks["even"], "kubevirt", tmp_path)
    assert result.path == tmp_path / "demo-containerdisk.tar" and result.image_ref
    image = engine_client.images.get(result.image_ref)
    try:
        assert image.id.removeprefix("sha256:")[:12] == result.image_ref.rsplit(":", 1)[1]
        container = engine_client.containers.create(image.id, command=["/none"])
        try:
            stream, _ = container.get_archive("/disk")
            data = b"".join(stream)
        finally:
            container.remove()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            infos = {m.name: m for m in tar.getmembers()}
            assert set(infos) == {"disk", "disk/demo.qcow2"}
            assert all((m.uid, m.gid) == (107, 107) for m in infos.values())
            tar.extract("disk/demo.qcow2", tmp_path / "x")
        assert same_content(disks["even"], "raw", tmp_path / "x" / "disk" / "demo.qcow2", "qcow2")
    finally:
        engine_client.images.remove(result.image_ref, force=True)


# ----------------------------------------------------------------------------------------- bad input


def test_detect_format_of_each_output(disks: dict[str, Path], tmp_path: Path) -> None:
    assert detect_format(disks["even"]) == "raw"
    expected = {"qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc"}
    for fmt, detected in expected.items():
        assert detect_format(convert(disks["even"], fmt, tmp_path).path) == detected


def test_failures_leave_no_partial_output(disks: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ToolError):  # a raw disk read as qcow2: qemu-img refuses
        formats.convert(disks["even"], "vhd", out, image_name="demo", source_format="qcow2")
    with pytest.raises(ConfigError):
        formats.convert(tmp_path / "absent.raw", "vhd", out, image_name="demo")
    with pytest.raises(ConfigError, match="unknown format"):
        formats.convert(disks["even"], "vhdx", out, image_name="demo")
    assert list(out.iterdir()) == []
