"""sha256_file skips holes (SEEK_DATA) but must give exactly the digest of every byte, holes as zeros."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from assembler.errors import DiskError
from assembler.fsutil import CHUNK, sha256_file, tar_name


def _write_sparse(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> bytes:
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset, data in pieces:
            handle.seek(offset)
            handle.write(data)
    return path.read_bytes()


@pytest.mark.parametrize(("size", "pieces"), [
    (0, []),
    (5 * CHUNK + 123, []),                                            # one hole
    (3 * CHUNK, [(0, b"start")]),                                     # data, then a hole to the end
    (3 * CHUNK + 7, [(3 * CHUNK, b"tail!!!")]),                       # a hole, then data at the very end
    (9 * CHUNK, [(CHUNK // 2, os.urandom(3 * CHUNK)), (7 * CHUNK + 5, b"x" * 70000)]),
    (4 * CHUNK + 1, [(0, os.urandom(4 * CHUNK + 1))]),                # no hole at all
])
def test_sparse_hash_equals_the_plain_hash(tmp_path: Path, size: int, pieces: list[tuple[int, bytes]]) -> None:
    path = tmp_path / "disk.raw"
    content = _write_sparse(path, size, pieces)
    assert len(content) == size
    assert sha256_file(path) == hashlib.sha256(content).hexdigest()


def test_written_zeros_and_holes_hash_alike(tmp_path: Path) -> None:
    holes = tmp_path / "holes"
    _write_sparse(holes, 2 * CHUNK, [(CHUNK, b"a")])
    written = tmp_path / "written"
    written.write_bytes(bytes(CHUNK) + b"a" + bytes(CHUNK - 1))
    assert sha256_file(holes) == sha256_file(written)
    assert os.stat(holes).st_blocks < os.stat(written).st_blocks  # really a sparse file on this filesystem


@pytest.mark.parametrize(("name", "canonical"), [
    ("./etc/hosts", "etc/hosts"), ("/etc/", "etc"), ("etc//ssh/./x", "etc/ssh/x"), ("../../etc/passwd", "etc/passwd"),
    ("./", ""), ("/", ""), (".", ""), ("usr/lib/../bin", "usr/bin"),
])
def test_every_tar_reader_names_a_member_one_way(name: str, canonical: str) -> None:
    assert tar_name(name) == canonical


def test_an_extra_disk_file_above_the_root_is_refused_not_folded_in() -> None:
    from assembler.disk.assemble import _extra_entries

    with pytest.raises(DiskError, match="invalid extra file path"):
        _extra_entries(set(), {"../etc/shadow": b"x"})
    assert [e.name for e in _extra_entries(set(), {"./usr/share/x": b"x"})][-1] == "usr/share/x"
