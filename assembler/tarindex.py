"""The index of a rootfs tar: each member's name, kind, size and header offset, so the disk phase sizes the
filesystem and reads single files (grub modules, the kernel, the BOM's inputs) without scanning the tar.

Made while the flattener writes the tar (it knows every offset then) and kept beside it in the rootfs entry
(rootfs.index.json), or by one scan of the headers when that file is absent or does not match the tar.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler.errors import DiskError
from assembler.fsutil import atomic_path, tar_name

BLOCK = 4096  # the ext4 block size the disk phase sizes the root filesystem in
INDEX_FORMAT = 1


@dataclass(frozen=True)
class TarMember:
    name: str  # normalised: no leading './' or '/', no trailing '/'
    offset: int  # first byte of the member's header chain in the tar
    size: int
    kind: str  # 'file', 'dir', 'symlink', 'hardlink', 'other'
    linkname: str
    xattrs: tuple[str, ...] = ()


@dataclass
class TarIndex:
    """One pass over the rootfs tar: what mke2fs will see, and what the disk needs to know."""

    path: Path
    members: list[TarMember] = field(default_factory=list)
    end: int = 0  # where the end-of-archive blocks start
    dot_slash: bool = True  # whether names are written './etc/...' (overlay entries follow the style)

    @property
    def names(self) -> set[str]:
        return {m.name for m in self.members}

    def content_bytes(self) -> int:
        """Space the files take in 4 KiB blocks (directories one block each, hardlinks nothing)."""
        total = 0
        for m in self.members:
            if m.kind == "file":
                total += -(-m.size // BLOCK) * BLOCK
            elif m.kind == "dir" or (m.kind == "symlink" and len(m.linkname) >= 60):
                total += BLOCK
        return total

    def inode_count(self) -> int:
        return sum(1 for m in self.members if m.kind != "hardlink")

    def add(self, info: tarfile.TarInfo, offset: int) -> None:
        """The header at `offset` (the first byte of its header chain), whether read or just written."""
        if not self.members:
            self.dot_slash = info.name == "." or info.name.startswith("./")
        link = tar_name(info.linkname) if info.islnk() else info.linkname
        self.members.append(TarMember(tar_name(info.name), offset, info.size, _kind(info), link,
                                      _xattr_names(info)))


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "other"


def index_tar(path: Path) -> TarIndex:
    """Read the tar's headers (not its data) once."""
    index = TarIndex(path=path)
    try:
        with tarfile.open(path, mode="r:") as tf:
            for info in tf:
                index.add(info, info.offset)
            index.end = tf.offset
    except (OSError, tarfile.TarError) as exc:
        raise DiskError(f"cannot read the rootfs tar {path}", details=str(exc),
                        resolution="pass an uncompressed tar (the rootfs phase output)") from exc
    if not index.members:
        raise DiskError(f"the rootfs tar {path} is empty", resolution="rebuild the rootfs")
    return index


def _xattr_names(info: tarfile.TarInfo) -> tuple[str, ...]:
    names = []
    for key in info.pax_headers:
        for prefix in ("SCHILY.xattr.", "LIBARCHIVE.xattr."):
            if key.startswith(prefix):
                names.append(key[len(prefix):])
    return tuple(sorted(set(names)))


def write_index(index: TarIndex, dest: Path, sha256: str) -> None:
    """Keep the index beside its tar; `sha256` is the tar's, so a reader can tell it belongs to that tar."""
    record = {"format": INDEX_FORMAT, "sha256": sha256, "size": index.end, "dot_slash": index.dot_slash,
              "members": [[m.name, m.offset, m.size, m.kind, m.linkname, list(m.xattrs)] for m in index.members]}
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(record, separators=(",", ":")))


def read_index(tar: Path, index_file: Path, sha256: str) -> TarIndex | None:
    """The kept index of `tar` (whose digest is `sha256`), or None when there is none or it is for another
    tar or malformed: the caller scans the tar instead. Offsets are checked again where data is read."""
    try:
        record: Any = json.loads(index_file.read_text())
        if record.get("format") != INDEX_FORMAT or record.get("sha256") != sha256:
            return None
        index = TarIndex(path=tar, end=int(record["size"]), dot_slash=bool(record["dot_slash"]))
        index.members = [TarMember(str(name), int(offset), int(size), str(kind), str(link),
                                   tuple(str(x) for x in xattrs))
                         for name, offset, size, kind, link, xattrs in record["members"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if not index.members or index.end > tar.stat().st_size:
        return None
    return index
