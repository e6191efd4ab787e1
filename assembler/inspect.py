"""`assembler inspect`: what a built artefact holds (versions, packages, layers, partitions, digests).

A target is an out/IMAGE directory (manifest.json + BOM), a disk image in any format (read through
libguestfs, read-only: the embedded BOM and release file, else dpkg's status), a saved image archive,
a flattened rootfs tar, an SPDX file, or an image in the container engine.
"""

from __future__ import annotations

import json
import re
import struct
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler import bom
from assembler.errors import ConfigError
from assembler.fsutil import sha256_bytes
from assembler.manifest import Manifest, read_manifest
from assembler.rootfs import layers
from assembler.run import run

SECTOR = 512
RELEASE_FILES = ("etc/assembler-release",)


# ----------------------------------------------------------------------------------- what is it?


def detect_disk_format(path: Path) -> str | None:
    """qemu-img's name for the disk format, from the magic bytes; None when it is not a disk image."""
    with path.open("rb") as handle:
        head = handle.read(SECTOR * 2)
        size = handle.seek(0, 2)
        handle.seek(max(0, size - SECTOR))
        tail = handle.read(SECTOR)
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"KDMV") or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if tail.startswith(b"conectix") or head.startswith(b"conectix"):
        return "vpc"  # a fixed VHD looks raw to qemu-img: always name the format
    if head[SECTOR:SECTOR + 8] == b"EFI PART" or head[510:512] == b"\x55\xaa":
        return "raw"
    return None


_ARCHIVE_NAME = re.compile(
    r"^([0-9a-f]{64}(/|\.json$)|blobs(/|$)|oci-layout$|index\.json$|manifest\.json$|repositories$)")


def tar_kind(path: Path) -> str | None:
    """'archive' (docker save / OCI layout), 'rootfs' (a filesystem tree) or None (not a tar)."""
    if not tarfile.is_tarfile(path):
        return None
    with tarfile.open(path, mode="r:") as tf:
        for _, member in zip(range(8), tf, strict=False):
            if _ARCHIVE_NAME.match(member.name.removeprefix("./")):
                return "archive"
    return "rootfs"


@dataclass(frozen=True)
class GptPartition:
    number: int
    name: str
    start: int  # bytes
    size: int  # bytes
    type_guid: str
    guid: str


def read_gpt(raw: Path) -> list[GptPartition]:
    """The partitions of a raw disk's GPT (primary header), without any tool."""
    with raw.open("rb") as handle:
        handle.seek(SECTOR)
        header = handle.read(92)
        if header[:8] != b"EFI PART":
            return []
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        handle.seek(entries_lba * SECTOR)
        table = handle.read(count * entry_size)
    parts: list[GptPartition] = []
    for i in range(count):
        entry = table[i * entry_size:(i + 1) * entry_size]
        if entry[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le", "replace").rstrip("\0")
        parts.append(GptPartition(i + 1, name, first * SECTOR, (last - first + 1) * SECTOR,
                                  str(uuid.UUID(bytes_le=entry[:16])), str(uuid.UUID(bytes_le=entry[16:32]))))
    return parts


@contextmanager
def raw_view(disk: Path, fmt: str) -> Iterator[Path]:
    """The disk as a raw file: itself, or a sparse temporary conversion (qemu-img) for other formats."""
    if fmt == "raw":
        yield disk
        return
    with tempfile.TemporaryDirectory(prefix="assembler-raw-", dir=disk.parent) as tmp:
        raw = Path(tmp) / "disk.raw"
        run(["qemu-img", "convert", "-f", fmt, "-O", "raw", "-S", "4k", disk, raw],
            resolution="check that the file is a complete disk image")
        yield raw


# ---------------------------------------------------------------------------------------- disks


def read_disk(disk: Path, fmt: str) -> dict[str, Any]:
    """Partitions and the embedded BOM/release of a disk, through one read-only libguestfs appliance."""
    from assembler.guestfs import mount_root, open_disk

    files: dict[str, bytes] = {}
    with open_disk(disk, fmt=fmt, readonly=True) as handle:
        partitions = _guest_partitions(handle)
        mount_root(handle)
        for path in (bom.BOM_PATH, bom.RELEASE_PATH, *RELEASE_FILES, *bom.OS_RELEASE, bom.STATUS):
            if handle.is_file("/" + path, followsymlinks=True):
                files[path] = bytes(handle.read_file("/" + path))
    return {"partitions": partitions, "files": files}


def _guest_partitions(handle: Any) -> list[dict[str, Any]]:
    device = handle.list_devices()[0]
    result = []
    for part in handle.part_list(device):
        number = int(part["part_num"])
        dev = f"{device}{number}"
        info: dict[str, Any] = {"number": number, "name": handle.part_get_name(device, number),
                                "start": int(part["part_start"]), "size": int(part["part_size"])}
        try:
            info["filesystem"] = handle.vfs_type(dev) or None
            info["uuid"] = handle.vfs_uuid(dev) or None
            info["label"] = handle.vfs_label(dev) or None
        except RuntimeError:  # no filesystem (the BIOS boot partition)
            info.update(filesystem=None, uuid=None, label=None)
        result.append(info)
    return result


# --------------------------------------------------------------------------------------- reports


def _packages_from_db(db: bom.DpkgDb) -> list[dict[str, str]]:
    return [{"name": p.name, "version": p.version, "architecture": p.architecture, "source": p.source,
             "source_version": p.source_version} for p in db.packages.values()]


def report_from_bom(doc: dict[str, Any], target: str, kind: str) -> dict[str, Any]:
    facts = bom.summary(doc)
    return {
        "target": target, "kind": kind, "image": facts.get("image") or doc.get("name", ""),
        "source_date_epoch": facts.get("source_date_epoch"),
        "digests": {"rootfs_sha256": facts.get("rootfs_sha256"), "oci_digest": facts.get("oci_digest"),
                    "base_image": facts.get("base_image")},
        "layers": [{"index": i, **layer} for i, layer in enumerate(facts.get("layers", []))],
        "packages": bom.package_list(doc),
        "os": bom.release_of(doc),
        "downloads": facts.get("downloads", []),
        "tools": bom.tools(doc),
        "bom": {"spdx_version": doc.get("spdxVersion"), "namespace": doc.get("documentNamespace"),
                "sha256": sha256_bytes(bom.document_bytes(doc))},
    }


def inspect_disk(disk: Path, fmt: str | None = None) -> dict[str, Any]:
    fmt = fmt or detect_disk_format(disk) or "raw"
    found = read_disk(disk, fmt)
    files: dict[str, bytes] = found["files"]
    if bom.BOM_PATH in files:
        report = report_from_bom(json.loads(files[bom.BOM_PATH]), str(disk), "disk")
        report["bom"]["path"] = "/" + bom.BOM_PATH
    else:
        db = bom.dpkg_db(files)
        report = {"target": str(disk), "kind": "disk", "image": "", "digests": {}, "layers": [],
                  "packages": _packages_from_db(db), "downloads": [], "tools": {}, "bom": None}
    report["format"] = fmt
    report["partitions"] = found["partitions"]
    report["release"] = bom.parse_release(files.get(bom.RELEASE_PATH, b"").decode("utf-8", "replace"))
    report["image_release"] = bom.parse_release(
        b"".join(files.get(p, b"") for p in RELEASE_FILES).decode("utf-8", "replace"))
    report["os"] = bom.os_release(files)
    return report


def out_dir_bom(out: Path, manifest: Manifest) -> Path | None:
    spdx = manifest.output("spdx")
    if spdx is not None:
        return out / spdx.path
    found = sorted(out.glob("*.spdx.json"))
    return found[0] if found else None


def rootfs_tar_of(out: Path, manifest: Manifest) -> Path | None:
    tar = manifest.output("rootfs-tar")
    return out / tar.path if tar is not None and (out / tar.path).is_file() else None


def inspect_out_dir(out: Path) -> dict[str, Any]:
    manifest = read_manifest(out)
    spdx = out_dir_bom(out, manifest)
    if spdx is not None:
        report = report_from_bom(bom.load_spdx(spdx), str(out), "out")
        report["bom"]["path"] = str(spdx)
    else:
        tar = rootfs_tar_of(out, manifest)
        files = bom.read_tar_members(tar) if tar else {}
        report = {"target": str(out), "kind": "out", "image": manifest.image, "bom": None,
                  "packages": _packages_from_db(bom.dpkg_db(files)), "downloads": [], "tools": {},
                  "os": bom.os_release(files)}
    oci, disk = manifest.oci, manifest.disk
    report["digests"] = {"rootfs_sha256": manifest.rootfs.sha256 if manifest.rootfs else None,
                         "oci_digest": oci.digest if oci else None, "base_image": manifest.base_image}
    report["layers"] = [{"index": i, **layer.model_dump()} for i, layer in enumerate(oci.layers if oci else ())]
    report["source_date_epoch"] = manifest.source_date_epoch
    report["tools"] = report.get("tools") or dict(manifest.tools)
    report["outputs"] = [o.model_dump() for o in manifest.outputs]
    report["partitions"] = [{"number": p.number, "name": p.label or p.role, "start": p.start, "size": p.size,
                             "filesystem": p.fs, "uuid": p.fs_uuid, "label": p.label}
                            for p in (disk.partitions if disk else ())]
    if disk:
        report["kernel"] = disk.kernel_version
    return report


def inspect_index(index: layers.LayerIndex, target: str, kind: str) -> dict[str, Any]:
    db = bom.dpkg_db(index.captured)
    return {"target": target, "kind": kind, "image": "", "bom": None, "tools": {}, "downloads": [],
            "digests": {"oci_digest": index.image_id or None},
            "layers": [{"index": layer.index, "digest": layer.diff_id, "step": layer.step}
                       for layer in index.layers] if kind != "rootfs" else [],
            "packages": _packages_from_db(db), "os": bom.os_release(index.captured)}


@contextmanager
def saved_image(ref: str) -> Iterator[Path]:
    """`docker save` of an engine image into a temporary archive."""
    from assembler import engine

    client = engine.connect(start=False)
    image_id = engine.image_id(client, ref)
    if image_id is None:
        raise ConfigError(f"not a file, directory or engine image: {ref}",
                          resolution="pass out/IMAGE, a disk image, an image archive or an image reference")
    with tempfile.TemporaryDirectory(prefix="assembler-inspect-") as tmp:
        yield engine.save_image(client, image_id, Path(tmp) / "image.tar")


def inspect_target(target: str) -> dict[str, Any]:
    path = Path(target)
    if path.is_dir():
        return inspect_out_dir(path)
    if path.is_file():
        if path.suffix == ".json":
            return report_from_bom(bom.load_spdx(path), target, "bom")
        kind = tar_kind(path)
        if kind == "archive":
            return inspect_index(layers.read_archive(path, capture=bom.wants_dpkg), target, "archive")
        if kind == "rootfs":
            files = bom.read_tar_members(path)
            index = layers.LayerIndex("", (), files)
            return inspect_index(index, target, "rootfs")
        fmt = detect_disk_format(path)
        if fmt is None:
            raise ConfigError(f"cannot tell what {target} is", resolution="pass a disk image, a tar or out/IMAGE")
        return inspect_disk(path, fmt)
    with saved_image(target) as archive:
        report = inspect_index(layers.read_archive(archive, capture=bom.wants_dpkg), target, "image")
    return report
