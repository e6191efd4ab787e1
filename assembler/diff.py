"""`assembler diff A B`: what changed between two builds, and which Containerfile step changed it.

Each side is loaded into the same shape (a `Side`): its layers (when known), the merged file tree with the
layer that last wrote each path, dpkg's packages and file lists, the BOM's download pins, and for disks
the bytes of each partition. Then the parts both sides have are compared: layers aligned by step,
packages added/removed/upgraded/downgraded, files added/removed/changed (size, mode), each change
attributed to the step of B that made it (or, for what B lacks, the step of A that had added it), and for
disks which byte regions differ and why.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler import bom
from assembler.errors import ConfigError
from assembler.fsutil import next_extent
from assembler.inspect import (
    detect_disk_format,
    raw_view,
    read_disk,
    read_gpt,
    rootfs_tar_of,
    saved_image,
    tar_kind,
)
from assembler.manifest import Manifest, read_manifest
from assembler.rootfs import layers
from assembler.rootfs.downloads import Fetched
from assembler.rootfs.layers import FileEntry, LayerIndex, Placed

ZERO_BLOCK = 4096
READ_CHUNK = 1 << 20
ZERO = bytes(ZERO_BLOCK)
INFO_RE = re.compile(r"^var/lib/dpkg/info/([^/:]+)(?::[^/.]+)?\.[^/]+$")


@dataclass(frozen=True)
class Region:
    name: str  # "partition 2 (ESP)" or "outside partitions (MBR, GPT, gaps)"
    role: str  # the GPT partition name, or "tables"
    start: int
    size: int
    digest: str


@dataclass(frozen=True)
class DiskBytes:
    path: str
    format: str
    size: int
    digest: str  # over the whole disk, holes and zero blocks folded (see content_digest)
    regions: tuple[Region, ...]


@dataclass
class Side:
    """One side of a diff, in the shape the comparison needs; None where the input does not tell."""

    label: str
    kind: str  # out, image, archive, rootfs, disk, bom
    image: str = ""
    rootfs_sha256: str | None = None
    index: LayerIndex | None = None
    tree: dict[str, Placed] | None = None
    dpkg: bom.DpkgDb | None = None
    packages: dict[str, dict[str, str]] | None = None  # name -> {version, architecture, source, ...}
    downloads: list[dict[str, str]] = field(default_factory=list)
    disk: DiskBytes | None = None

    def step(self, layer: int) -> str:
        if self.index is None or layer >= len(self.index.layers):
            return ""
        return self.index.layers[layer].instruction


# ------------------------------------------------------------------------------------ disk bytes


def content_digest(handle: Any, start: int, size: int) -> str:
    """sha256 of a byte range where each all-zero 4 KiB block (holes included) counts as one marker.

    Holes are skipped with SEEK_DATA, so a mostly-empty multi-GiB sparse disk hashes in about a second,
    and a hole and written zeros give the same digest (blocks are aligned to `start`, holes to 4 KiB).
    """
    digest = hashlib.sha256()
    fd = handle.fileno()
    end, pos = start + size, start
    zeros = 0

    def flush() -> None:
        nonlocal zeros
        if zeros:
            digest.update(b"\0Z%d\0" % zeros)
            zeros = 0

    while pos < end:
        data_at, hole_at = next_extent(fd, pos, end)
        zeros += (data_at - pos) // ZERO_BLOCK
        pos = data_at
        if pos >= end:
            break
        os.lseek(fd, pos, os.SEEK_SET)
        while pos < hole_at:
            chunk = os.read(fd, min(READ_CHUNK, hole_at - pos))
            if not chunk:
                break
            if chunk.count(0) == len(chunk):
                zeros += -(-len(chunk) // ZERO_BLOCK)
            else:
                view = memoryview(chunk)
                for offset in range(0, len(chunk), ZERO_BLOCK):
                    block = view[offset:offset + ZERO_BLOCK]
                    if block == ZERO[:len(block)]:
                        zeros += 1
                    else:
                        flush()
                        digest.update(block)
            pos += len(chunk)
    flush()
    return digest.hexdigest()


def disk_bytes(disk: Path, fmt: str) -> DiskBytes:
    """Digests of every GPT partition and of what lies outside them (tables, boot code, gaps)."""
    with raw_view(disk, fmt) as raw, raw.open("rb") as handle:
        size = handle.seek(0, 2)
        parts = read_gpt(raw)
        regions = [Region(f"partition {p.number} ({p.name or 'unnamed'})", p.name or str(p.number), p.start,
                          p.size, content_digest(handle, p.start, p.size)) for p in parts]
        outside = hashlib.sha256()
        pos = 0
        for p in sorted(parts, key=lambda p: p.start):
            outside.update(content_digest(handle, pos, p.start - pos).encode())
            pos = p.start + p.size
        outside.update(content_digest(handle, pos, size - pos).encode())
        regions.insert(0, Region("outside partitions (MBR, GPT headers, gaps)", "tables", 0, size,
                                 outside.hexdigest()))
        whole = hashlib.sha256("".join(r.digest for r in regions).encode()).hexdigest()
    return DiskBytes(str(disk), fmt, size, whole, tuple(regions))


# ------------------------------------------------------------------------------------------ sides


def _store_layers(manifest: Manifest, cache: Path | None) -> Path | None:
    """layers.json of the build's rootfs phase, found in the store by the phase key in the manifest."""
    from assembler.config import cache_dir
    from assembler.store import Store

    key = manifest.phase_key("rootfs")
    entry = Store(cache_dir(cache)).get(key) if key else None
    path = entry.file("layers.json") if entry else None
    return path if path is not None and path.is_file() else None


def _side_from_index(side: Side, index: LayerIndex, files: dict[str, bytes]) -> Side:
    side.index = index
    side.tree = layers.merge(index)
    side.dpkg = bom.dpkg_db(files)
    return side


def load_out_dir(out: Path, cache: Path | None = None) -> Side:
    manifest = read_manifest(out)
    side = Side(str(out), "out", image=manifest.image,
                rootfs_sha256=manifest.rootfs.sha256 if manifest.rootfs else None)
    tar = rootfs_tar_of(out, manifest)
    index_path = next(iter(sorted(out.glob("*layers.json"))), None) or _store_layers(manifest, cache)
    if index_path is not None and tar is not None:
        _side_from_index(side, layers.load_index(index_path), bom.read_tar_members(tar))
    elif tar is not None:
        index = layers.index_rootfs_tar(tar, capture=bom.wants_dpkg)
        _side_from_index(side, index, index.captured)
    spdx = sorted(out.glob("*.spdx.json"))
    if spdx:
        doc = bom.load_spdx(spdx[0])
        side.downloads = bom.summary(doc).get("downloads", [])
        side.packages = bom.deb_packages(doc) if side.dpkg is None else None
    raw = manifest.output("raw")
    if raw is not None and (out / raw.path).is_file():
        side.disk = disk_bytes(out / raw.path, "raw")
    return side


def load_disk(path: Path, fmt: str, *, read_bom: bool = True) -> Side:
    side = Side(str(path), "disk", disk=disk_bytes(path, fmt))
    if read_bom:
        files = read_disk(path, fmt)["files"]
        if bom.BOM_PATH in files:
            doc = json.loads(files[bom.BOM_PATH])
            facts = bom.summary(doc)
            side.image, side.rootfs_sha256 = facts.get("image", ""), facts.get("rootfs_sha256")
            side.packages, side.downloads = bom.deb_packages(doc), facts.get("downloads", [])
        else:
            side.dpkg = bom.dpkg_db(files)
    return side


def load_side(target: str, *, cache: Path | None = None, read_disk_bom: bool = True) -> Side:
    """Load a build output directory, disk, image archive, rootfs tar, SPDX file or engine image."""
    path = Path(target)
    if path.is_dir():
        return load_out_dir(path, cache)
    if path.is_file():
        if path.suffix == ".json":
            doc = bom.load_spdx(path)
            facts = bom.summary(doc)
            return Side(target, "bom", image=facts.get("image", ""), rootfs_sha256=facts.get("rootfs_sha256"),
                        packages=bom.deb_packages(doc), downloads=facts.get("downloads", []))
        kind = tar_kind(path)
        if kind == "archive":
            index = layers.read_archive(path, capture=bom.wants_dpkg)
            return _side_from_index(Side(target, "archive"), index, index.captured)
        if kind == "rootfs":
            index = layers.index_rootfs_tar(path, capture=bom.wants_dpkg)
            return _side_from_index(Side(target, "rootfs"), index, index.captured)
        fmt = detect_disk_format(path)
        if fmt is None:
            raise ConfigError(f"cannot tell what {target} is",
                              resolution="pass out/IMAGE, a disk image, an image archive or a rootfs tar")
        return load_disk(path, fmt, read_bom=read_disk_bom)
    with saved_image(target) as archive:
        index = layers.read_archive(archive, capture=bom.wants_dpkg)
    return _side_from_index(Side(target, "image"), index, index.captured)


# ------------------------------------------------------------------------------------- comparing


def _layer_rows(a: LayerIndex, b: LayerIndex) -> list[dict[str, Any]]:
    """Layers side by side, aligned by their step text; same step with other content is 'changed'."""
    sa = [layer.instruction for layer in a.layers]
    sb = [layer.instruction for layer in b.layers]
    rows: list[dict[str, Any]] = []

    def row(status: str, i: int | None, j: int | None) -> None:
        rows.append({"status": status,
                     "a": {"index": i, "digest": a.layers[i].diff_id, "step": sa[i]} if i is not None else None,
                     "b": {"index": j, "digest": b.layers[j].diff_id, "step": sb[j]} if j is not None else None})

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, sa, sb, autojunk=False).get_opcodes():
        pairs = list(zip(range(i1, i2), range(j1, j2), strict=False))
        for i, j in pairs:
            row(_layer_status(a.layers[i], b.layers[j], tag == "equal"), i, j)
        for i in range(i1 + len(pairs), i2):
            row("removed", i, None)
        for j in range(j1 + len(pairs), j2):
            row("added", None, j)
    return rows


def _layer_status(x: layers.Layer, y: layers.Layer, same_step: bool) -> str:
    """same: identical bytes; same-content: only times differ (layer tars keep build-time mtimes)."""
    if same_step and x.diff_id == y.diff_id:
        return "same"
    if same_step and (x.entries, x.whiteouts, x.opaque) == (y.entries, y.whiteouts, y.opaque):
        return "same-content"
    return "changed"


def _entry_json(entry: FileEntry) -> dict[str, Any]:
    return {"type": entry.type, "size": entry.size, "mode": f"{entry.mode:04o}", "uid": entry.uid,
            "gid": entry.gid, **({"link": entry.link} if entry.link and entry.type == "symlink" else {})}


def _deleters(index: LayerIndex) -> dict[str, int]:
    """Path -> topmost layer that deleted it (whiteout) or hid everything below it (opaque directory)."""
    found: dict[str, int] = {}
    for layer in index.layers:
        for path in (*layer.whiteouts, *layer.opaque):
            found[path] = layer.index
    return found


def _deleted_by(path: str, deleters: dict[str, int]) -> int | None:
    probe = path
    while probe:
        if probe in deleters:
            return deleters[probe]
        probe = posixpath.dirname(probe)
    return None


def _owners(path: str, owners: dict[str, list[str]]) -> list[str]:
    if path in owners:
        return sorted(owners[path])
    match = INFO_RE.match(path)
    return [match.group(1)] if match else []


def diff_files(a: Side, b: Side) -> list[dict[str, Any]]:
    """Every path whose presence or content differs, attributed to a layer/step and owning package(s)."""
    assert a.tree is not None and b.tree is not None
    deleters = _deleters(b.index) if b.index else {}
    owners_b = b.dpkg.owner_map() if b.dpkg else {}
    owners_a = a.dpkg.owner_map() if a.dpkg else {}
    changes: list[dict[str, Any]] = []
    for path in sorted(a.tree.keys() | b.tree.keys()):
        old, new = a.tree.get(path), b.tree.get(path)
        if old is not None and new is not None:
            if old.entry.same_content(new.entry):
                continue
            change = {"change": "changed", "path": path, "side": "b", "layer": new.layer,
                      "step": b.step(new.layer), **_entry_json(new.entry), "old": _entry_json(old.entry),
                      "packages": _owners(path, owners_b)}
            if old.entry.sha256 != new.entry.sha256:
                change["content"] = True
        elif new is not None:
            change = {"change": "added", "path": path, "side": "b", "layer": new.layer, "step": b.step(new.layer),
                      **_entry_json(new.entry), "packages": _owners(path, owners_b)}
        else:
            assert old is not None
            layer = _deleted_by(path, deleters)
            attribution = {"side": "b", "layer": layer, "step": b.step(layer)} if layer is not None else {
                "side": "a", "layer": old.layer, "step": a.step(old.layer)}
            change = {"change": "removed", "path": path, **attribution, **_entry_json(old.entry),
                      "packages": _owners(path, owners_a)}
        changes.append(change)
    return changes


def _versions(side: Side) -> dict[str, dict[str, str]] | None:
    if side.dpkg is not None and side.dpkg.packages:
        return {name: {"version": p.version, "architecture": p.architecture, "source": p.source,
                       "source_version": p.source_version} for name, p in side.dpkg.packages.items()}
    return side.packages


def _package_step(side: Side, name: str) -> tuple[int | None, str]:
    if side.index is None or side.dpkg is None or side.tree is None:
        return None, ""
    layer = bom.package_layers(side.index, bom.DpkgDb({name: side.dpkg.packages[name]}), side.tree).get(name)
    return layer, side.step(layer) if layer is not None else ""


def diff_packages(a: Side, b: Side) -> dict[str, list[dict[str, Any]]]:
    va, vb = _versions(a), _versions(b)
    result: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "upgraded": [], "downgraded": []}
    if va is None or vb is None:
        return result
    for name in sorted(va.keys() | vb.keys()):
        old, new = va.get(name), vb.get(name)
        if new is not None and old is None:
            layer, step = _package_step(b, name)
            result["added"].append({"name": name, **new, "layer": layer, "step": step,
                                    "files": b.dpkg.files.get(name, []) if b.dpkg else []})
        elif old is not None and new is None:
            layer, step = _deleted_package_step(a, b, name)
            result["removed"].append({"name": name, **old, "layer": layer, "step": step,
                                      "files": a.dpkg.files.get(name, []) if a.dpkg else []})
        elif old is not None and new is not None and old["version"] != new["version"]:
            kind = "upgraded" if bom.compare_versions(new["version"], old["version"]) > 0 else "downgraded"
            layer, step = _package_step(b, name)
            result[kind].append({"name": name, "from": old["version"], "to": new["version"],
                                 "architecture": new["architecture"], "layer": layer, "step": step})
    return result


def _deleted_package_step(a: Side, b: Side, name: str) -> tuple[int | None, str]:
    if b.index is not None:
        layer = _deleted_by(f"{bom.INFO_DIR}{name}.list", _deleters(b.index))
        if layer is not None:
            return layer, b.step(layer)
    layer, step = _package_step(a, name)
    return layer, (f"(in A) {step}" if step else "")


def _pins(side: Side) -> dict[str, Fetched]:
    """A side's download records by name, read as the BOM writer wrote them (Fetched: name, url, sha256).

    Fetched.from_mapping names a record without one after its URL, drops a "sha256:" prefix and refuses one
    without url or sha256, as the build does when it writes the BOM.
    """
    return {pin.name: pin for pin in map(Fetched.from_mapping, side.downloads)}


def _pin_json(pin: Fetched) -> dict[str, str]:
    # Only what a BOM records: from_mapping's dest and status would be its defaults, not facts of the build.
    return {"name": pin.name, "url": pin.url, "sha256": pin.sha256}


def diff_downloads(a: Side, b: Side) -> dict[str, list[dict[str, Any]]]:
    """Download pins by name: other bytes (sha256) or another source (url) is a change.

    A pin is a URL and a checksum, not a version (downloads.yaml has none), so there is no upgrade or
    downgrade to tell apart; `fields` says which of the two changed.
    """
    pa, pb = _pins(a), _pins(b)
    result: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": []}
    for name in sorted(pa.keys() | pb.keys()):
        old, new = pa.get(name), pb.get(name)
        if old is None and new is not None:
            result["added"].append(_pin_json(new))
        elif new is None and old is not None:
            result["removed"].append(_pin_json(old))
        elif old is not None and new is not None:
            fields = [f for f in ("sha256", "url") if getattr(old, f) != getattr(new, f)]
            if fields:
                result["changed"].append({"name": name, "fields": fields, "from_url": old.url, "to_url": new.url,
                                          "from_sha256": old.sha256, "to_sha256": new.sha256})
    return result


def diff_disks(a: DiskBytes, b: DiskBytes, files_differ: bool | None) -> dict[str, Any]:
    ra = {r.role: r for r in a.regions}
    rb = {r.role: r for r in b.regions}
    regions = []
    for role in sorted(ra.keys() | rb.keys(), key=lambda r: (r != "tables", r)):
        x, y = ra.get(role), rb.get(role)
        same = x is not None and y is not None and (x.digest, x.start, x.size) == (y.digest, y.start, y.size)
        shown = y or x
        regions.append({"region": shown.name if shown else role, "role": role, "identical": same,
                        "reason": "" if same else _why(role, x, y, files_differ)})
    identical = a.digest == b.digest and a.size == b.size
    return {"identical": identical, "a": {"format": a.format, "size": a.size, "digest": a.digest},
            "b": {"format": b.format, "size": b.size, "digest": b.digest}, "regions": regions}


def _why(role: str, x: Region | None, y: Region | None, files_differ: bool | None) -> str:
    if x is None or y is None:
        return "the partition exists on one disk only"
    if role == "tables":
        if x.size != y.size:
            return f"the disk size differs ({x.size} -> {y.size} bytes), so the backup GPT moved"
        return "partition table, disk/partition GUIDs or MBR boot code (ids derive from the rootfs digest)"
    if (x.start, x.size) != (y.start, y.size):
        return f"the partition moved or was resized ({x.start}+{x.size} -> {y.start}+{y.size})"
    if role.lower() in ("root", "rootfs") or "root" in role.lower():
        if files_differ is True:
            return "the root filesystem's files differ (see files)"
        if files_differ is False:
            return "same files, different filesystem metadata (ids, timestamps or allocation)"
        return "the root filesystem differs"
    if "esp" in role.lower() or "efi" in role.lower():
        return "the EFI system partition differs (BOOTX64.EFI: grub image or its embedded config)"
    if "bios" in role.lower():
        return "the BIOS boot partition differs (grub core.img)"
    return "the partition's bytes differ"


def diff_sides(a: Side, b: Side) -> dict[str, Any]:
    """The whole comparison as a JSON-ready dict; `identical` is true when nothing compared differs."""
    report: dict[str, Any] = {"a": _describe(a), "b": _describe(b), "compared": [], "not_compared": []}
    if a.index is not None and b.index is not None and a.kind != "rootfs" and b.kind != "rootfs":
        report["layers"] = _layer_rows(a.index, b.index)
        report["compared"].append("layers")
    files: list[dict[str, Any]] | None = None
    if a.tree is not None and b.tree is not None:
        files = diff_files(a, b)
        report["files"] = files
        report["steps"] = _by_step(files)
        report["compared"].append("files")
        _mark_hidden(report.get("layers", []), files)
    else:
        report["not_compared"].append("files (one side has no file tree: a disk or an SPDX file)")
    if _versions(a) is not None and _versions(b) is not None:
        report["packages"] = diff_packages(a, b)
        report["compared"].append("packages")
    else:
        report["not_compared"].append("packages (one side has neither dpkg data nor a BOM)")
    report["downloads"] = diff_downloads(a, b)
    if a.disk is not None and b.disk is not None:
        report["disk"] = diff_disks(a.disk, b.disk, bool(files) if files is not None else None)
        report["compared"].append("disk")
    elif a.disk is not None or b.disk is not None:
        report["not_compared"].append("disk bytes (only one side is or has a raw disk)")
    report["identical"] = not _has_changes(report)
    return report


def _mark_hidden(rows: list[dict[str, Any]], files: list[dict[str, Any]]) -> None:
    """A changed layer none of whose changes survive (a later step deleted them: logs, keys) is 'hidden'."""
    touched = {c["layer"] for c in files if c["side"] == "b"}
    for row in rows:
        if row["status"] == "changed" and row["b"] is not None and row["b"]["index"] not in touched \
                and row["a"] is not None and row["a"]["step"] == row["b"]["step"]:
            row["status"] = "changed-hidden"


def _describe(side: Side) -> dict[str, Any]:
    return {"target": side.label, "kind": side.kind, "image": side.image, "rootfs_sha256": side.rootfs_sha256,
            "image_id": side.index.image_id if side.index else None}


def _by_step(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int | None], dict[str, Any]] = {}
    for change in files:
        key = (change["side"], change["layer"])
        group = groups.setdefault(key, {"side": change["side"], "layer": change["layer"], "step": change["step"],
                                        "added": 0, "removed": 0, "changed": 0})
        group[change["change"]] += 1
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], -1 if k[1] is None else k[1]))]


def _has_changes(report: dict[str, Any]) -> bool:
    # Layers whose differences later steps hide (or that only differ in times) leave the image as it was.
    if any(row["status"] in ("added", "removed") for row in report.get("layers", [])):
        return True
    if any(row["status"] == "changed" for row in report.get("layers", [])) and "files" not in report:
        return True
    if report.get("files"):
        return True
    if any(report.get("packages", {}).values()) or any(report["downloads"].values()):
        return True
    return "disk" in report and not report["disk"]["identical"]


def diff(a: str, b: str, *, cache: Path | None = None) -> dict[str, Any]:
    """Compare two targets (out/ directories, disks, image archives, rootfs tars, SPDX files, images)."""
    return diff_sides(load_side(a, cache=cache), load_side(b, cache=cache))
