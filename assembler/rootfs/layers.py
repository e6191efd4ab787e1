"""Per-layer file index of a saved image: what each Containerfile step added, changed and deleted.

`index_archive()` reads a docker-archive (or an OCI layout tar) once, sequentially, and records for every
layer its diff_id, the instruction that made it, and each member (path, type, mode, owner, size, sha256 of
the content, link target) plus its whiteouts. Times are left out on purpose: layer mtimes are wall-clock
build times, and two builds of the same tree must give the same index. `merge()` applies the layers as
overlayfs would (the same rules as flatten.py) and remembers which layer wrote each surviving
path, which is how `assembler diff` attributes a change to a step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from assembler.errors import ConfigError
from assembler.fsutil import atomic_path, tar_name
from assembler.overlay import Overlay
from assembler.packages import BUILD_ONLY_PATHS
from assembler.rootfs import flatten

INDEX_VERSION = 1
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20
Capture = Callable[[str], bool]
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileEntry:
    """One path as a layer (or a flattened tree) holds it."""

    path: str  # relative, no leading '/' or './'
    type: str  # file, dir, symlink, hardlink, char, block, fifo
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str | None = None  # regular files (hard links: their target's content)
    link: str | None = None  # symlink target, or hard link target path

    def same_content(self, other: FileEntry) -> bool:
        """Equal as the image sees it (a hard link and the file it points at compare by content)."""
        kinds = {self.type, other.type}
        if kinds <= {"file", "hardlink"}:
            return (self.sha256, self.mode, self.uid, self.gid) == (other.sha256, other.mode, other.uid, other.gid)
        return (self.type, self.mode, self.uid, self.gid, self.size, self.sha256, self.link) == (
            other.type, other.mode, other.uid, other.gid, other.size, other.sha256, other.link)


@dataclass(frozen=True)
class Layer:
    index: int
    diff_id: str
    step: str  # the history's created_by, e.g. "/bin/sh -c apt-get install ..."
    entries: tuple[FileEntry, ...]
    whiteouts: tuple[str, ...] = ()  # paths this layer deletes from the layers below
    opaque: tuple[str, ...] = ()  # directories whose lower content this layer hides

    @property
    def instruction(self) -> str:
        return step_label(self.step)


@dataclass(frozen=True)
class LayerIndex:
    image_id: str
    layers: tuple[Layer, ...]
    captured: dict[str, bytes] = field(default_factory=dict, compare=False)  # merged view, not serialised

    def to_json(self) -> dict[str, Any]:
        return {"version": INDEX_VERSION, "image_id": self.image_id,
                "layers": [_layer_json(layer) for layer in self.layers]}


def _layer_json(layer: Layer) -> dict[str, Any]:
    return {"index": layer.index, "diff_id": layer.diff_id, "step": layer.step,
            "whiteouts": list(layer.whiteouts), "opaque": list(layer.opaque),
            "entries": [_entry_json(e) for e in layer.entries]}


def _layer_from_json(data: dict[str, Any]) -> Layer:
    return Layer(int(data["index"]), str(data["diff_id"]), str(data["step"]),
                 tuple(FileEntry(**entry) for entry in data["entries"]),
                 tuple(str(p) for p in data.get("whiteouts", ())), tuple(str(p) for p in data.get("opaque", ())))


def _entry_json(entry: FileEntry) -> dict[str, Any]:
    return {k: v for k, v in asdict(entry).items() if v is not None}


def step_label(created_by: str) -> str:
    """A history entry as the Containerfile line it came from: 'RUN apt-get ...', 'COPY file:... in /x'."""
    text = " ".join(created_by.split())
    text = re.sub(r"^\|\d+(?: \S+=\S*)* ", "", text)  # build args the classic builder prefixes to RUN
    if match := re.match(r"^/bin/sh -c #\(nop\)\s*(.*)$", text):
        return match.group(1)
    if match := re.match(r"^/bin/sh -c (.*)$", text):
        return "RUN " + match.group(1)
    return text or "(unknown step)"


# ------------------------------------------------------------------------------------------- reading


_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file", tarfile.DIRTYPE: "dir",
          tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
          tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
_KINDS = frozenset(_TYPES.values()) | {"other"}


def _hash(handle: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    if handle is not None:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo, path: str,
                 capture: Capture | None, captured: dict[str, bytes]) -> str:
    """sha256 of a regular member's content; keeps the bytes too when `capture` wants the path."""
    handle = tf.extractfile(member)
    if capture is not None and capture(path) and handle is not None:
        data = handle.read()
        captured[path] = data
        return hashlib.sha256(data).hexdigest()
    return _hash(handle)


def index_layer_tar(tf: tarfile.TarFile, index: int = 0, diff_id: str = "", step: str = "",
                    capture: Capture | None = None) -> tuple[Layer, dict[str, bytes]]:
    """Index one layer (or a flattened rootfs) read sequentially; returns it and the captured files."""
    entries: list[FileEntry] = []
    whiteouts: list[str] = []
    opaque: list[str] = []
    digests: dict[str, str] = {}
    captured: dict[str, bytes] = {}
    for member in tf:
        path = tar_name(member.name)
        base = posixpath.basename(path)
        if base == OPAQUE:
            opaque.append(posixpath.dirname(path))
            continue
        if base.startswith(WHITEOUT):
            if not base.startswith(WHITEOUT + WHITEOUT):  # other .wh..wh.* are AUFS bookkeeping
                whiteouts.append(posixpath.join(posixpath.dirname(path), base[len(WHITEOUT):]))
            continue
        if not path or path in BUILD_ONLY_PATHS:  # the build base's own apt config never reaches an image
            continue
        kind = _TYPES.get(member.type, "other")
        sha, link = None, None
        if kind == "file":
            sha = digests[path] = _read_member(tf, member, path, capture, captured)
        elif kind == "hardlink":
            link = tar_name(member.linkname)
            sha = digests.get(link)  # None when the target lives in a lower layer; merge() fills it
        elif kind == "symlink":
            link = member.linkname
        size = member.size if kind == "file" else 0
        entries.append(FileEntry(path, kind, member.mode & 0o7777, member.uid, member.gid, size, sha, link))
    return Layer(index, diff_id, step, tuple(entries), tuple(whiteouts), tuple(opaque)), captured


@contextmanager
def _layer_tar(outer: tarfile.TarFile, name: str) -> Iterator[tarfile.TarFile]:
    handle = outer.extractfile(name)
    if handle is None:
        raise ConfigError(f"layer {name} is missing from the archive", resolution="save the image again")
    # Stream mode: sequential reads, and gzip/bzip2/xz layers are decompressed on the fly.
    with tarfile.open(fileobj=handle, mode="r|*") as tf:
        yield tf


@contextmanager
def _open_outer(archive: Path) -> Iterator[tarfile.TarFile]:
    if not tarfile.is_tarfile(archive):
        raise ConfigError(f"not a tar archive: {archive}",
                          resolution="pass the output of `docker save` or an OCI layout tar")
    with tarfile.open(archive, mode="r:") as outer:
        yield outer


class LayerCache:
    """Indexed layers by content digest (diff_id): a rebuild reads only the layers it has not seen.

    A layer's entries are a function of its bytes, the index format and the paths the index drops, so those
    two name the directory; its position and step come from each image that holds it. Files here are ours but
    read back as untrusted: anything that does not parse is indexed again.
    """

    def __init__(self, cache_root: Path) -> None:
        rules = hashlib.sha256("\n".join(sorted(BUILD_ONLY_PATHS)).encode()).hexdigest()[:12]
        self.root = cache_root / "layers"
        self.dir = self.root / f"v{INDEX_VERSION}-{rules}"
        # The flattener's parsed headers of the same layers (flatten.MemberCache), pruned with them.
        self.members = flatten.MemberCache(self.root / f"members-v{flatten.MEMBERS_VERSION}")

    def prune(self, keep: set[str]) -> int:
        """Drop every index (and parsed header list) whose layer no entry names any more, and those of other
        formats."""
        removed = 0
        current = (self.dir, self.members.root)
        for stale in (p for p in self.root.glob("*") if p not in current):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        for path in sorted(p for d in current for p in d.glob("*")):
            if f"sha256:{path.stem}" not in keep or path.suffix != ".json":
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def get(self, diff_id: str, index: int, step: str) -> Layer | None:
        path = flatten.layer_file(self.dir, diff_id)
        if path is None or not path.is_file():
            return None
        try:
            layer = _layer_from_json({**json.loads(path.read_text()), "index": index, "diff_id": diff_id,
                                      "step": step})
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        return layer if all(map(_well_formed, layer.entries)) else None

    def put(self, layer: Layer) -> None:
        path = flatten.layer_file(self.dir, layer.diff_id)
        if path is None:
            return
        data = _layer_json(layer)
        for name in ("index", "diff_id", "step"):
            del data[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")


def _well_formed(entry: FileEntry) -> bool:
    ints = (entry.mode, entry.uid, entry.gid, entry.size)
    return (isinstance(entry.path, str) and entry.type in _KINDS and all(type(n) is int and n >= 0 for n in ints)
            and (entry.sha256 is None or (isinstance(entry.sha256, str) and bool(_HEX64.fullmatch(entry.sha256))))
            and (entry.link is None or isinstance(entry.link, str)))


def read_archive(archive: Path, capture: Capture | None = None, cache: LayerCache | None = None) -> LayerIndex:
    """Index every layer of the single image in `archive` (docker-archive or OCI layout tar).

    With a `cache` (and nothing to capture: captured bytes are not cached), a layer indexed before is not read:
    the outer tar is seekable, so skipping it costs nothing.
    """
    if not archive.is_file():
        raise ConfigError(f"image archive not found: {archive}", resolution="save the image first")
    layers: list[Layer] = []
    per_layer: list[dict[str, bytes]] = []
    with _open_outer(archive) as outer:
        ref = flatten.read_image(outer)
        for i, name in enumerate(ref.layers):
            known = cache.get(ref.diff_ids[i], i, ref.created_by[i]) if cache and capture is None else None
            if known is not None:
                layers.append(known)
                per_layer.append({})
                continue
            with _layer_tar(outer, name) as tf:
                layer, captured = index_layer_tar(tf, i, ref.diff_ids[i], ref.created_by[i], capture)
            if cache is not None and capture is None:
                cache.put(layer)
            layers.append(layer)
            per_layer.append(captured)
    index = LayerIndex(ref.image_id, tuple(layers))
    tree = merge(index)
    captured_view = {p: per_layer[tree[p].layer][p] for p in tree if p in per_layer[tree[p].layer]}
    return LayerIndex(ref.image_id, index.layers, captured_view)


def index_archive(archive: Path, dest: Path, cache: LayerCache | None = None) -> LayerIndex:
    """Index the image in `archive` and write the index to `dest` (compact, deterministic JSON)."""
    index = read_archive(archive, cache=cache)
    write_index(index, dest)
    return index


def write_index(index: LayerIndex, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(index.to_json(), sort_keys=True, separators=(",", ":")) + "\n")
    dest.chmod(0o644)


def load_index(path: Path) -> LayerIndex:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the layer index {path}", details=str(exc),
                          resolution="rebuild the image (the rootfs phase writes layers.json)") from exc
    if data.get("version") != INDEX_VERSION:
        raise ConfigError(f"layer index {path} has version {data.get('version')}, expected {INDEX_VERSION}",
                          resolution="rebuild the image with this assembler")
    return LayerIndex(str(data["image_id"]), tuple(_layer_from_json(layer) for layer in data["layers"]))


# ------------------------------------------------------------------------------------------- merging


@dataclass(frozen=True)
class Placed:
    """A surviving path of the merged tree and the layer that last wrote it."""

    entry: FileEntry
    layer: int


def merge(index: LayerIndex) -> dict[str, Placed]:
    """The container's view: layers applied bottom-up with whiteouts (the flatten rules: assembler.overlay)."""
    tree: Overlay[Placed] = Overlay(is_dir=lambda placed: placed.entry.type == "dir")
    for layer in index.layers:
        named: set[str] = set()
        implied = functools.partial(_implicit_dir, layer=layer.index)
        for directory in layer.opaque:
            tree.opaque(directory, functools.partial(_implicit_dir, directory, layer.index))
            tree.imply(directory, named, implied)
        for path in layer.whiteouts:
            tree.whiteout(path)
            tree.imply(posixpath.dirname(path), named, implied)
        for entry in layer.entries:
            if entry.type == "hardlink" and entry.sha256 is None and entry.link in tree.nodes:
                target = tree.nodes[entry.link].entry
                entry = FileEntry(**{**asdict(entry), "sha256": target.sha256, "size": 0})
            tree.imply(posixpath.dirname(entry.path), named, implied)
            named.add(entry.path)
            tree.add(entry.path, Placed(entry, layer.index))
    return tree.nodes


def _implicit_dir(path: str, layer: int) -> Placed:
    return Placed(FileEntry(path=path, type="dir", mode=0o755, uid=0, gid=0, size=0), layer)


def index_rootfs_tar(rootfs_tar: Path, capture: Capture | None = None, step: str = "rootfs") -> LayerIndex:
    """A flattened rootfs tar as a one-layer index (no step attribution beyond the tar itself)."""
    try:
        with tarfile.open(rootfs_tar, mode="r|*") as tf:
            layer, captured = index_layer_tar(tf, 0, "", step, capture)
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"cannot read the tar {rootfs_tar}", details=str(exc)) from exc
    return LayerIndex("", (layer,), captured)
