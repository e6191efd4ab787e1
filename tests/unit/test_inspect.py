"""inspect: what a file is (disk format, archive or rootfs tar) and reports from BOMs and archives."""

from __future__ import annotations

import io
import struct
import tarfile
import uuid
from pathlib import Path

from assembler import inspect as ins


def test_detect_disk_formats(tmp_path: Path) -> None:
    cases = {"q": (b"QFI\xfb" + bytes(1020), "qcow2"), "v": (b"KDMV" + bytes(1020), "vmdk"),
             "x": (b"vhdxfile" + bytes(1016), "vhdx"), "h": (bytes(1024) + b"conectix" + bytes(504), "vpc"),
             "r": (bytes(512) + b"EFI PART" + bytes(504), "raw"), "n": (b"hello" * 300, None)}
    for name, (data, fmt) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert ins.detect_disk_format(tmp_path / name) == fmt, name


def test_tar_kind(tmp_path: Path) -> None:
    for name, members, kind in (("a.tar", ["manifest.json"], "archive"), ("b.tar", [f"{'a' * 64}/layer.tar"],
                                "archive"), ("r.tar", ["bin/sh", "etc/passwd"], "rootfs")):
        with tarfile.open(tmp_path / name, "w") as tf:
            for member in members:
                tf.addfile(tarfile.TarInfo(member), io.BytesIO(b""))
        assert ins.tar_kind(tmp_path / name) == kind
    (tmp_path / "plain").write_bytes(b"not a tar" * 100)
    assert ins.tar_kind(tmp_path / "plain") is None


def test_read_gpt(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    part_guid, type_guid = uuid.uuid4(), uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
    entry = type_guid.bytes_le + part_guid.bytes_le + struct.pack("<QQQ", 2048, 4095, 0) + \
        "root".encode("utf-16-le").ljust(72, b"\0")
    header = b"EFI PART" + bytes(64) + struct.pack("<QII", 2, 128, 128)
    with disk.open("wb") as handle:
        handle.truncate(4096 * 512)
        handle.seek(512)
        handle.write(header)
        handle.seek(1024)
        handle.write(entry)
    (part,) = ins.read_gpt(disk)
    assert (part.number, part.name, part.start, part.size, part.guid) == (1, "root", 2048 * 512, 2048 * 512,
                                                                         str(part_guid))
