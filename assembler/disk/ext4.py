"""The ext4 root, built in one step by `mke2fs -d` from the rootfs tar (no mount, no appliance).

e2fsprogs >= 1.47.1 reads a tarball directly (through libarchive): inode times come from the tar, new
metadata times from E2FSPROGS_FAKE_TIME, the directory hash seed and UUID are fixed: the filesystem is a
function of the tar. Older mke2fs needs a directory tree; that path works but is not bit-identical
(inode ctimes are copied from the extraction time).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from assembler.disk.layout import RootFsOptions
from assembler.errors import DiskError, ToolError
from assembler.fsutil import tar_name
from assembler.run import require_tool, run
from assembler.tarindex import BLOCK, TarIndex, TarMember

TAR_BLOCK = 512
# Inode slack beyond the entries in the tar (files created at first boot: logs, machine-id, keys).
INODE_SLACK = 16384


def read_members(index: TarIndex, members: Iterable[TarMember]) -> Iterator[tuple[TarMember, bytes]]:
    """The data of chosen regular members, read at their indexed offsets instead of scanning the tar."""
    with tarfile.open(index.path, mode="r:") as tf:
        for member in members:
            tf.fileobj.seek(member.offset)
            try:
                info = tarfile.TarInfo.fromtarfile(tf)  # parses the PAX/GNU headers before the member too
                found = tar_name(info.name)
            except tarfile.TarError as exc:
                found = f"no header ({exc})"
            if found != member.name:
                raise DiskError(f"the rootfs tar {index.path} changed since it was indexed",
                                details=f"expected {member.name} at byte {member.offset}, found {found}",
                                resolution="rebuild the disk phase")
            handle = tf.extractfile(info)
            yield member, handle.read() if handle is not None else b""


def dropped_xattrs(index: TarIndex) -> list[str]:
    """'name on /path' for every xattr mke2fs's tar mode does not copy (it keeps security.capability only)."""
    return [f"{x} on /{m.name}" for m in index.members for x in m.xattrs if x != "security.capability"]


def _version_key(version: str) -> list[tuple[int, object]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", version)]


def find_kernel(index: TarIndex) -> str:
    """The newest kernel version with both /boot/vmlinuz-V and /boot/initrd.img-V in the rootfs."""
    names = index.names
    versions = [n[len("boot/vmlinuz-"):] for n in names if n.startswith("boot/vmlinuz-")]
    complete = [v for v in versions if f"boot/initrd.img-{v}" in names]
    if not complete:
        raise DiskError(
            "the rootfs has no kernel with an initrd in /boot",
            details=f"kernels: {sorted(versions) or 'none'}",
            resolution="install a kernel and initramfs-tools in the image (e.g. linux-image-amd64)",
        )
    return max(complete, key=_version_key)


@dataclass(frozen=True)
class OverlayEntry:
    """A file or directory we add to (or replace in) the rootfs: owned by root, stamped with the epoch."""

    name: str
    data: bytes | None = None  # None: a directory
    mode: int = 0o644


def check_overlay(index: TarIndex, overlay: list[OverlayEntry]) -> set[str]:
    """The members the overlay replaces; never one that other members are hard links to."""
    replaced = {e.name for e in overlay} & index.names
    for m in index.members:
        if m.kind == "hardlink" and m.linkname in replaced:
            raise DiskError(f"cannot replace /{m.linkname}: /{m.name} is a hard link to it",
                            resolution="remove the hard link in the image")
    return replaced


def write_source_tar(index: TarIndex, overlay: list[OverlayEntry], out: IO[bytes], epoch: int) -> None:
    """The rootfs tar with overlay entries added, members they replace dropped, copied byte for byte into
    `out`: a file, or the pipe mke2fs reads (`-d -`), so no second copy of the tar is ever written."""
    replaced = check_overlay(index, overlay)
    bounds = [m.offset for m in index.members] + [index.end]
    out.flush()
    with index.path.open("rb") as src:
        for i, m in enumerate(index.members):
            if m.name in replaced:
                continue
            _move_range(src.fileno(), out.fileno(), bounds[i], bounds[i + 1] - bounds[i])
    # Headers written by hand, not through tarfile.open (which asks a pipe for its position): each member's
    # PAX header, its data padded to 512 bytes, then the two zero blocks that end an archive.
    for entry in overlay:
        info, data = _tarinfo(entry, epoch, index.dot_slash)
        out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if data is not None:
            payload = data.read()
            out.write(payload + bytes(-len(payload) % TAR_BLOCK))
    out.write(bytes(2 * TAR_BLOCK))
    out.flush()


def _move_range(in_fd: int, out_fd: int, start: int, length: int) -> None:
    """Copy in the kernel, the data never passing through this process (the rootfs tar can be most of a
    gigabyte): copy_file_range into a file, splice into a pipe."""
    into_pipe = stat.S_ISFIFO(os.fstat(out_fd).st_mode)
    while length > 0:
        moved = (os.splice(in_fd, out_fd, length, offset_src=start) if into_pipe
                 else os.copy_file_range(in_fd, out_fd, length, start))
        if moved == 0:
            raise DiskError("the rootfs tar ended early", resolution="rebuild the rootfs tar")
        start += moved
        length -= moved


def _tarinfo(entry: OverlayEntry, epoch: int, dot_slash: bool) -> tuple[tarfile.TarInfo, BinaryIO | None]:
    info = tarfile.TarInfo(("./" if dot_slash else "") + entry.name)
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.data is None:
        info.type = tarfile.DIRTYPE
        return info, None
    info.size = len(entry.data)
    return info, io.BytesIO(entry.data)


def mke2fs_version() -> tuple[int, ...]:
    require_tool("mke2fs")
    proc = run(["mke2fs", "-V"])
    text = (proc.stderr or b"").decode() + (proc.stdout or b"").decode()
    match = re.search(r"mke2fs (\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return (0,)
    return tuple(int(x) for x in match.groups(default="0"))


def supports_tarball() -> bool:
    """mke2fs -d accepts a tarball from 1.47.1 (libarchive is loaded at run time)."""
    return mke2fs_version() >= (1, 47, 1)


def mke2fs_config(options: RootFsOptions, dest: Path) -> Path:
    """Our own mke2fs.conf: the feature set must not depend on the build host's defaults."""
    dest.write_text(
        "[defaults]\n"
        "\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n"
        f"\tblocksize = {BLOCK}\n\tinode_size = 256\n\tinode_ratio = {options.inode_ratio}\n"
        "[fs_types]\n"
        f"\text4 = {{\n\t\tfeatures = {','.join(options.features)}\n\t}}\n"
        # mke2fs adds a size-class usage type; empty stanzas keep its settings ours (and quiet).
        + "".join(f"\t{usage} = {{\n\t\tinode_ratio = {options.inode_ratio}\n\t}}\n"
                  for usage in ("floppy", "small", "default", "big", "huge"))
    )
    return dest


@dataclass(frozen=True)
class Ext4Spec:
    uuid: str
    hash_seed: str
    size: int  # bytes, a multiple of 4 KiB
    inodes: int


def make_ext4(source: Path | Callable[[IO[bytes]], None], target: Path, offset: int, spec: Ext4Spec,
              options: RootFsOptions, conf: Path, epoch: int) -> None:
    """Build the filesystem in `target` at byte `offset` (the root partition of the disk file) from a
    directory, a tarball, or a function writing the tarball into mke2fs's standard input (`-d -`)."""
    extended = [f"hash_seed={spec.hash_seed}", "root_owner=0:0", f"offset={offset}", "nodiscard",
                "lazy_itable_init=1", "lazy_journal_init=1", "assume_storage_prezeroed=1"]
    cmd = ["mke2fs", "-F", "-q", "-t", "ext4", "-b", str(BLOCK), "-L", options.label, "-U", spec.uuid,
           "-m", str(options.reserved_percent), "-N", str(spec.inodes), "-E", ",".join(extended),
           "-d", "-" if callable(source) else str(source), str(target), str(spec.size // 1024) + "k"]
    env = {"E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_CONFIG": str(conf), "MKE2FS_DEVICE_SECTSIZE": "512",
           "MKE2FS_DEVICE_PHYS_SECTSIZE": "512"}
    try:
        run(cmd, env=env, feed=source if callable(source) else None)
    except ToolError as exc:
        if _is_full(exc.stderr_tail):
            raise DiskError(
                "the root filesystem is full: the content does not fit",
                details=exc.stderr_tail,
                resolution="raise the headroom or --size, or shrink the image",
            ) from exc
        raise


def _is_full(stderr: str) -> bool:
    text = stderr.lower()
    signs = ("no space left", "could not allocate", "no free space", "inode table full")
    return any(s in text for s in signs)


def extract_tree(source_tar: Path, dest: Path) -> None:
    """Fallback for mke2fs < 1.47.1: a directory tree with owners, modes, xattrs and devices kept."""
    require_tool("tar")
    dest.mkdir(parents=True, exist_ok=True)
    run(["tar", "--extract", "--file", str(source_tar), "--directory", str(dest), "--numeric-owner",
         "--same-permissions", "--same-owner", "--xattrs", "--xattrs-include=*", "--acls"])


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
