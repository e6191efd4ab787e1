"""The rootfs tar's index kept beside it: read back only for the tar it was written for, else None (and the
disk phase scans the tar instead)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from assembler.fsutil import sha256_file
from assembler.tarindex import index_tar, read_index, write_index


def _tar(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("./etc/hostname", b"box\n"), ("./usr/bin/tool", b"\x7fELF" * 300)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if name.endswith("tool"):
                info.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/bin/tool2")
        link.type, link.linkname = tarfile.LNKTYPE, "./usr/bin/tool"
        tar.addfile(link)
    return path


def test_an_index_reads_back_for_its_own_tar_only(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "rootfs.tar")
    digest = sha256_file(tar)
    scanned = index_tar(tar)
    write_index(scanned, tmp_path / "rootfs.index.json", digest)
    kept = read_index(tar, tmp_path / "rootfs.index.json", digest)
    assert kept is not None and kept.path == tar
    assert (kept.members, kept.end, kept.dot_slash) == (scanned.members, scanned.end, scanned.dot_slash)
    assert kept.members[1].xattrs == ("security.capability",) and kept.members[2].kind == "hardlink"
    assert read_index(tar, tmp_path / "rootfs.index.json", "0" * 64) is None  # another tar's index
    assert read_index(tar, tmp_path / "absent.json", digest) is None


def test_a_damaged_index_is_not_used(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "rootfs.tar")
    digest = sha256_file(tar)
    index_file = tmp_path / "rootfs.index.json"
    head = {"format": 1, "sha256": digest}
    bad = [{**head, "size": 1, "dot_slash": True, "members": [["a", "x"]]},
           {**head, "size": 99999999, "dot_slash": True, "members": [["a", 0, 1, "file", "", []]]}]
    for text in ("{", "[]", json.dumps(head), *(json.dumps(record) for record in bad)):
        index_file.write_text(text)
        assert read_index(tar, index_file, digest) is None, text
