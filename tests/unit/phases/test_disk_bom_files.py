"""The disk phase reads the BOM's files at the offsets of the disk's own index: the same bytes as a scan."""

from __future__ import annotations

from pathlib import Path

from assembler import bom, disk
from assembler.phases.disk import bom_files
from tests.unit import bomdata


def test_bom_files_from_the_disk_index_equal_a_scan_of_the_tar(tmp_path: Path) -> None:
    tar = bomdata.rootfs(tmp_path)
    files = bom_files(disk.index_tar(tar))
    assert files == bom.read_tar_members(tar)
    assert files["etc/os-release"] == files["usr/lib/os-release"]  # the symlink, read as its target
    assert "usr/bin/hello" not in files and b"Package: hello" in files["var/lib/dpkg/status"]


def test_the_bom_made_from_them_is_the_bom_made_from_the_tar(tmp_path: Path) -> None:
    tar = bomdata.rootfs(tmp_path)
    from_index = bom.bom_input(tar, files=bom_files(disk.index_tar(tar)), **bomdata.FACTS)
    assert bom.spdx_document(from_index) == bom.spdx_document(bom.bom_input(tar, **bomdata.FACTS))
