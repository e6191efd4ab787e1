"""File helpers that keep the no-half-files promise: write to a temporary path, rename into place."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; swap it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put tmp where final is: the old one (if any) is renamed aside first, each step atomic, so a crash
    leaves the old directory, none, or the new one, never a directory mixing both."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


ZEROS = bytes(CHUNK)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, holes included, without reading the holes.

    A disk image is mostly holes; read() would fill the page cache with zeros for each of them (on a
    freshly written 3 GiB raw: 6 s instead of 2 s). The holes found with SEEK_DATA/SEEK_HOLE are hashed
    from a buffer of zeros instead; only the allocated ranges are read. Same digest as `sha256sum`.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            data_at, hole_at = next_extent(fd, pos, size)
            while pos < data_at:  # a hole: hash zeros, read nothing
                step = min(CHUNK, data_at - pos)
                digest.update(ZEROS if step == CHUNK else ZEROS[:step])
                pos += step
            os.lseek(fd, pos, os.SEEK_SET)
            while pos < hole_at:
                got = os.readv(fd, [view[:min(CHUNK, hole_at - pos)]])
                if got == 0:  # the file shrank while we read it: hash what was there
                    return digest.hexdigest()
                digest.update(view[:got])
                pos += got
    return digest.hexdigest()


def next_extent(fd: int, pos: int, end: int) -> tuple[int, int]:
    """Where the next data starts at or after `pos`, and where the hole after it begins, both capped at `end`
    (the file size, or the end of the region being read)."""
    try:
        data_at = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole from pos to the end of the file
            return end, end
        return pos, end  # the filesystem cannot tell: read everything
    try:
        hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
    except OSError:
        hole_at = end
    return min(data_at, end), min(hole_at, end)


def sha256_tree(root: Path, exclude: tuple[str, ...] = ()) -> str:
    """Content hash of a directory: relative paths, modes and file bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        # File names are bytes: one that is not UTF-8 is hashed as it is (surrogateescape), not refused.
        if path.is_symlink():
            line = f"L {rel} {os.readlink(path)}\n"
        elif path.is_file():
            line = f"F {rel} {path.stat().st_mode & 0o7777:o} {sha256_file(path)}\n"
        elif path.is_dir():
            line = f"D {rel}\n"
        else:
            continue
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def tar_name(name: str) -> str:
    """A tar member's (or a link target's) canonical relative path: no leading ./ or /, no trailing /, no
    '..' above the root, '' for the root itself. Every reader of a tar (flatten, the layer index, the BOM,
    ext4) names a path this one way."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path
