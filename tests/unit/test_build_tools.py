"""The manifest's tool list: the disk phase's own versions (the ones in its key), never a second reading."""

from __future__ import annotations

from assembler import disk
from assembler.build import tool_versions


def test_the_manifest_names_the_disk_tools_as_the_disk_key_does() -> None:
    tools = tool_versions()
    own = disk.tool_versions()
    assert {name: tools[name] for name in own} == own
    assert tools["mkfs.vfat"].startswith("mkfs.fat ")  # not the first line of its usage text
    assert {"assembler", "python", "mmdebstrap", "qemu-img", "qemu-system-x86_64", "libguestfs"} <= tools.keys()
