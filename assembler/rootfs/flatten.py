"""Flatten a saved image (docker-archive or OCI layout tar) into one deterministic rootfs tar.

Layers are applied as overlayfs would (OCI image spec, "Applying changesets"): whiteouts `.wh.NAME` delete
NAME from lower layers, `.wh..wh..opq` hides all lower content of its directory, a non-directory replaces a
whole lower subtree. Only metadata is kept in memory; file data is copied straight from the layer tars.

The output is a function of the final tree only: entries sorted by path, mtimes clamped to
SOURCE_DATE_EPOCH, numeric owners, no atime/ctime, PAX with xattrs (sorted), hard links re-pointed at the
first surviving path of their group, so it is bit-identical whenever the container's view is.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from assembler.errors import ConfigError
from assembler.fsutil import atomic_path, tar_name
from assembler.overlay import Overlay
from assembler.packages import BUILD_ONLY_PATHS
from assembler.tarindex import TarIndex

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HEX64 = re.compile(r"[0-9a-f]{64}")
COPY_CHUNK = 1 << 20  # file data is copied (and hashed) in pieces of this size


@dataclass(frozen=True)
class LayerInfo:
    index: int
    path: str  # member name inside the archive
    diff_id: str
    created_by: str
    entries: int
    whiteouts: int


@dataclass(frozen=True)
class FlattenResult:
    path: Path
    sha256: str
    size: int
    entries: int
    image_id: str
    index: TarIndex  # every member's header offset, taken while writing
    layers: list[LayerInfo] = field(default_factory=list)


@dataclass
class _Node:
    """A path in the merged tree; `source` is the member that holds its data and inode metadata."""

    layer: int
    source: tarfile.TarInfo


def _tree() -> Overlay[_Node]:
    return Overlay(is_dir=lambda node: node.source.isdir())


def _implicit_dir(path: str, index: int) -> _Node:
    """A directory a layer implies without an entry (a parent it omits, an opaque marker's): root-owned
    0755, clamped time, as the engine creates it when it extracts the layer."""
    info = tarfile.TarInfo(path)
    info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o755, 0, 0, 0
    return _Node(index, info)


# ------------------------------------------------------------------------------------------- the archive


@dataclass(frozen=True)
class ArchiveImage:
    """The single image of a docker-archive or OCI layout tar: its ID, layer members and their steps."""

    image_id: str
    layers: list[str]  # member names inside the archive, bottom first
    diff_ids: list[str]
    created_by: list[str]


def _read_json(archive: tarfile.TarFile, name: str) -> Any:
    try:
        handle = archive.extractfile(name)
    except KeyError:
        return None
    if handle is None:
        return None
    return json.load(handle)


def read_image(archive: tarfile.TarFile) -> ArchiveImage:
    """Find the config and layer list: docker-archive manifest.json first, else an OCI index.json."""
    manifest = _read_json(archive, "manifest.json")
    if manifest:
        if len(manifest) != 1:
            raise ConfigError(f"the archive holds {len(manifest)} images; flatten needs exactly one",
                              resolution="save a single image (`docker save IMAGE_ID`)")
        config_name, layers = manifest[0]["Config"], list(manifest[0]["Layers"])
    else:
        config_name, layers = _oci_manifest(archive)
    config = _read_json(archive, config_name)
    if config is None:
        raise ConfigError(f"image config {config_name} is missing from the archive")
    handle = archive.extractfile(config_name)
    assert handle is not None
    image_id = "sha256:" + hashlib.sha256(handle.read()).hexdigest()
    history = [h for h in config.get("history", []) if not h.get("empty_layer")]
    creators = [str(h.get("created_by", "")) for h in history]
    if len(creators) != len(layers):  # a base imported without history: align the known steps from the top
        creators = ([""] * len(layers) + creators)[-len(layers):]
    diff_ids = list(config.get("rootfs", {}).get("diff_ids", [])) or [""] * len(layers)
    return ArchiveImage(image_id, layers, diff_ids, creators)


def _blob(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    return f"blobs/{algo}/{hexdigest}"


def _oci_manifest(archive: tarfile.TarFile) -> tuple[str, list[str]]:
    index = _read_json(archive, "index.json")
    if not index or not index.get("manifests"):
        raise ConfigError("not an image archive: neither manifest.json nor index.json found",
                          resolution="pass the output of `docker save` / `podman save` or an OCI layout tar")
    descriptor = index["manifests"][0]
    manifest = _read_json(archive, _blob(descriptor["digest"]))
    while manifest and "manifests" in manifest:  # a nested index (e.g. docker >= 25 saves one)
        manifest = _read_json(archive, _blob(manifest["manifests"][0]["digest"]))
    if not manifest:
        raise ConfigError("the OCI index points at a manifest that is missing from the archive")
    return _blob(manifest["config"]["digest"]), [_blob(layer["digest"]) for layer in manifest["layers"]]


class _Span:
    """One member's data read straight from the file that holds it (os.pread at absolute offsets, in the
    writer's large chunks), not through the nested tar readers (archive -> layer -> member) piece by piece."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        self.fd, self.pos, self.end = fd, start, start + size

    def read(self, size: int = -1) -> bytes:
        size = self.end - self.pos if size < 0 else min(size, self.end - self.pos)
        data = os.pread(self.fd, size, self.pos)
        self.pos += len(data)
        return data


@dataclass(frozen=True)
class _Layer:
    """A layer's tar and where its bytes lie: file descriptor and the offset of the layer's first byte."""

    tar: tarfile.TarFile
    fd: int
    base: int
    size: int  # of the (uncompressed) layer tar: a cached header list is used only for a layer of this size

    def data(self, member: tarfile.TarInfo) -> IO[bytes] | _Span | None:
        if member.issparse():  # a sparse map needs tarfile's own reader
            return self.tar.extractfile(member)
        return _Span(self.fd, self.base + member.offset_data, member.size)


@contextmanager
def _open_layer(archive: tarfile.TarFile, fd: int, name: str, scratch: Path) -> Iterator[_Layer]:
    """A seekable TarFile for a layer (`fd`: the archive's file); compressed layers are decompressed to a
    scratch file first."""
    try:
        member = archive.getmember(name)
    except KeyError:
        member = None
    handle = archive.extractfile(member) if member is not None and member.isreg() else None
    if member is None or handle is None or member.issparse():
        raise ConfigError(f"layer {name} is missing from the archive")
    magic = handle.read(4)
    handle.seek(0)
    if magic.startswith(ZSTD_MAGIC):
        raise ConfigError(f"layer {name} is zstd-compressed, which flatten does not read",
                          resolution="save the image with `docker save` (uncompressed layers)")
    if magic.startswith(GZIP_MAGIC):
        with tempfile.NamedTemporaryFile(dir=scratch, suffix=".tar") as plain:
            with gzip.GzipFile(fileobj=handle) as unzipped:
                shutil.copyfileobj(unzipped, plain, 1 << 20)
            plain.flush()
            plain.seek(0)
            with tarfile.open(fileobj=plain, mode="r:") as layer:
                yield _Layer(layer, plain.fileno(), 0, os.fstat(plain.fileno()).st_size)
        return
    with tarfile.open(fileobj=handle, mode="r:") as layer:
        yield _Layer(layer, fd, member.offset_data, member.size)


# ------------------------------------------------------------------------------------ parsed headers, cached

MEMBERS_VERSION = 1
_TYPES = frozenset(t.decode("latin-1") for t in (*tarfile.SUPPORTED_TYPES, tarfile.AREGTYPE))


def layer_file(directory: Path, diff_id: str) -> Path | None:
    """Where a cache keeps what it knows of one layer: DIR/<hex of a sha256 diff_id>.json (None for any other
    digest, so a crafted one names no other path)."""
    algo, _, hexdigest = diff_id.partition(":")
    return directory / f"{hexdigest}.json" if algo == "sha256" and _HEX64.fullmatch(hexdigest) else None


class MemberCache:
    """Each layer's parsed tar headers by content digest (diff_id): a rebuild parses only the layers it has not
    seen (a last-step change: the new layer), and reads the others' data at the offsets kept here.

    A layer tar's bytes are a function of its diff_id, so are the headers and their offsets. Files here are
    ours but read back as untrusted: one that does not parse, or a layer of another size, is parsed again.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, diff_id: str, size: int) -> list[tarfile.TarInfo] | None:
        path = layer_file(self.root, diff_id)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("version") != MEMBERS_VERSION or data.get("size") != size:
                return None
            return [_member(record) for record in data["members"]]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def put(self, diff_id: str, size: int, members: list[tarfile.TarInfo]) -> None:
        path = layer_file(self.root, diff_id)
        if path is None or any(m.issparse() for m in members):  # a sparse map is not kept: parse such a layer
            return
        records = [[m.name, m.type.decode("latin-1"), m.mode, m.uid, m.gid, m.mtime, m.size, m.linkname,
                    m.devmajor, m.devminor, m.offset, m.offset_data,
                    {k: v for k, v in sorted(m.pax_headers.items()) if k.startswith(XATTR_PREFIXES)}]
                   for m in members]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"version": MEMBERS_VERSION, "size": size, "members": records},
                                      separators=(",", ":")) + "\n")


def _member(record: list[Any]) -> tarfile.TarInfo:
    """A header as the layer tar had it (what flatten uses of it), from a cached record; ValueError if not."""
    name, kind, mode, uid, gid, mtime, size, linkname, major, minor, offset, offset_data, pax = record
    ints = (mode, uid, gid, size, major, minor, offset, offset_data)
    if (not isinstance(name, str) or kind not in _TYPES or not isinstance(linkname, str)
            or not all(type(n) is int and n >= 0 for n in ints) or type(mtime) not in (int, float)
            or not isinstance(pax, dict)
            or not all(isinstance(k, str) and k.startswith(XATTR_PREFIXES) and isinstance(v, str)
                       for k, v in pax.items())):
        raise ValueError("malformed cached header")
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind.encode("latin-1"), mode, uid, gid, mtime
    info.size, info.linkname, info.devmajor, info.devminor = size, linkname, major, minor
    info.offset, info.offset_data, info.pax_headers = offset, offset_data, pax
    return info


def _layer_members(layer: _Layer, diff_id: str, cache: MemberCache | None) -> list[tarfile.TarInfo]:
    cached = cache.get(diff_id, layer.size) if cache is not None else None
    if cached is not None:
        return cached
    members = layer.tar.getmembers()
    if cache is not None:
        cache.put(diff_id, layer.size, members)
    return members


# ------------------------------------------------------------------------------------ applying the layers


# Files the engine bind-mounts into every RUN step. Podman (buildah) leaves an empty placeholder of each in
# the step's layer when the image had none; Docker leaves nothing. Dropped (only as such: empty, and new in
# that layer), a Podman build gives Docker's bits: same pinned inputs, same rootfs, whichever engine.
ENGINE_MOUNT_POINTS = frozenset({"etc/resolv.conf", "etc/hosts", "etc/hostname", "run/.containerenv"})


def _apply_layer(tree: Overlay[_Node], index: int, members: list[tarfile.TarInfo]) -> tuple[int, int]:
    """Apply one layer: its whiteouts against the lower layers first, then its entries."""
    in_layer: dict[str, _Node] = {}
    named: set[str] = set()
    implied = functools.partial(_implicit_dir, index=index)
    whiteouts = 0
    for member in members:
        path = tar_name(member.name)
        base = posixpath.basename(path)
        if base == OPAQUE:
            directory = posixpath.dirname(path)
            tree.opaque(directory, functools.partial(_implicit_dir, directory, index))
            tree.imply(directory, named, implied)
            whiteouts += 1
        elif base.startswith(WHITEOUT):
            if not base.startswith(WHITEOUT + WHITEOUT):  # other .wh..wh.* are AUFS metadata
                tree.whiteout(posixpath.join(posixpath.dirname(path), base[len(WHITEOUT):]))
            tree.imply(posixpath.dirname(path), named, implied)
            whiteouts += 1
    entries = 0
    for member in members:
        path = tar_name(member.name)
        if not path or posixpath.basename(path).startswith(WHITEOUT) or path in BUILD_ONLY_PATHS:
            continue
        if path in ENGINE_MOUNT_POINTS and member.isreg() and member.size == 0 and path not in tree.nodes:
            continue
        tree.imply(posixpath.dirname(path), named, implied)
        node = _link_node(tree, in_layer, member) if member.islnk() else _Node(index, member)
        in_layer[path] = node
        named.add(path)
        tree.add(path, node)
        entries += 1
    return entries, whiteouts


def _link_node(tree: Overlay[_Node], in_layer: dict[str, _Node], member: tarfile.TarInfo) -> _Node:
    """A hard link shares its target's data: the target in this layer, else (rarely) the merged one."""
    target = tar_name(member.linkname)
    if target in in_layer:
        return in_layer[target]
    if target in tree.nodes and tree.nodes[target].source.isreg():
        return tree.nodes[target]
    raise ConfigError(f"hard link {member.name} points at {member.linkname}, which the image does not have",
                      resolution="the archive is damaged; save the image again")


# ------------------------------------------------------------------------------------------ writing output


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.digest, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.size


def _output_info(path: str, source: tarfile.TarInfo, sde: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    # Old-style and contiguous regular files become plain regular files; type bits leave the mode (Go's
    # archive/tar writes them, GNU tar does not), so equal trees give equal bytes whichever engine saved them.
    info.type = tarfile.REGTYPE if source.type in (tarfile.AREGTYPE, tarfile.CONTTYPE) else source.type
    info.mode, info.uid, info.gid = source.mode & 0o7777, source.uid, source.gid
    info.uname = info.gname = ""
    info.mtime = min(int(source.mtime), sde)
    info.size = source.size if info.type == tarfile.REGTYPE else 0
    info.linkname = source.linkname if source.issym() else ""
    info.devmajor, info.devminor = source.devmajor, source.devminor
    info.pax_headers = {k: v for k, v in sorted(source.pax_headers.items()) if k.startswith(XATTR_PREFIXES)}
    return info


def _write_tree(tree: Overlay[_Node], layers: list[_Layer], out: tarfile.TarFile, sde: int,
                index: TarIndex) -> None:
    """Write every surviving path in sorted order; the first path of a link group carries the data. Each
    member's header offset goes into `index` as it is written (no second pass over the tar to find them)."""
    first_of: dict[int, str] = {}
    for path in sorted(tree.nodes, key=lambda p: p.encode("utf-8", "surrogateescape")):
        node = tree.nodes[path]
        info = _output_info(path, node.source, sde)
        offset = out.offset
        if node.source.isreg() or node.source.islnk():
            group = id(node.source)
            if group in first_of:
                info.type, info.size, info.linkname = tarfile.LNKTYPE, 0, first_of[group]
                out.addfile(info)
            else:
                first_of[group] = path
                out.addfile(info, layers[node.layer].data(node.source))
        else:
            out.addfile(info)
        index.add(info, offset)
    index.end = out.offset


def _open_archive(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:")
    except tarfile.TarError as exc:
        raise ConfigError(f"not a tar archive: {archive}", details=str(exc)) from exc


def flatten(archive: Path, dest_tar: Path, *, source_date_epoch: int,
            members: MemberCache | None = None) -> FlattenResult:
    """Flatten the single image in `archive` into a deterministic rootfs tar at dest_tar (atomically);
    `members`: where each layer's parsed headers are kept by diff_id."""
    if not archive.is_file():
        raise ConfigError(f"image archive not found: {archive}", resolution="save the image first")
    with _open_archive(archive) as outer, ExitStack() as stack, atomic_path(dest_tar) as tmp:
        image = read_image(outer)
        fd = os.open(archive, os.O_RDONLY)
        stack.callback(os.close, fd)
        tree, infos, layers = _tree(), [], []
        for index, name in enumerate(image.layers):
            layer = stack.enter_context(_open_layer(outer, fd, name, dest_tar.parent))
            layers.append(layer)
            entries, whiteouts = _apply_layer(tree, index, _layer_members(layer, image.diff_ids[index], members))
            infos.append(LayerInfo(index, name, image.diff_ids[index], image.created_by[index], entries,
                                   whiteouts))
        with tmp.open("wb") as raw:
            writer = _HashingWriter(raw)
            with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                              encoding="utf-8", errors="surrogateescape", copybufsize=COPY_CHUNK) as out:
                written = TarIndex(path=dest_tar)
                _write_tree(tree, layers, out, source_date_epoch, written)
    return FlattenResult(path=dest_tar, sha256=writer.digest.hexdigest(), size=writer.size,
                         entries=len(written.members),
                         image_id=image.image_id, layers=infos, index=written)
