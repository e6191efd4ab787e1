"""The GPT, written by sfdisk from a script that gives every GUID (disk and partitions), so it never varies.

sfdisk rather than sgdisk: sgdisk syncs and then sleeps a second after every write (a wait for the kernel to
re-read a block device's table), which is a second of every disk build spent on a plain file.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from assembler.disk.layout import ROOT_TYPE_GUIDS, Architecture, PlannedPartition, type_guid
from assembler.errors import DiskError
from assembler.run import require_tool, run

SECTOR = 512
# The first usable sector of a GPT with the standard 128-entry array (what sgdisk and most tools use).
FIRST_LBA = 34
GPT_HEAD_SECTORS = 34  # protective MBR, GPT header, 128 partition entries


def gpt_script(disk_guid: str, parts: list[tuple[PlannedPartition, str, str]],
               architecture: Architecture = "amd64") -> str:
    """The sfdisk script of the table: sectors computed from the byte placement, partitions in number order."""
    lines = ["label: gpt", f"label-id: {disk_guid}", "unit: sectors", f"first-lba: {FIRST_LBA}",
             f"sector-size: {SECTOR}"]
    ordered = sorted(parts, key=lambda part: part[0].number)
    if [p.number for p, _, _ in ordered] != list(range(1, len(ordered) + 1)):
        raise DiskError("partition numbers must run 1, 2, 3... without gaps",
                        details=", ".join(str(p.number) for p, _, _ in ordered),
                        resolution="fix the layout file")
    for placed, guid, name in ordered:
        if '"' in name or "\\" in name:
            raise DiskError(f"partition name {name!r} holds a quote or backslash",
                            resolution="use letters, digits, '-' and '_' in layout labels")
        lines.append(f"start={placed.start // SECTOR}, size={placed.size // SECTOR}, "
                     f"type={type_guid(placed.role, architecture)}, uuid={guid}, name=\"{name}\"")
    return "\n".join(lines) + "\n"


def write_gpt(disk: Path, disk_guid: str, parts: list[tuple[PlannedPartition, str, str]],
              architecture: Architecture = "amd64") -> None:
    """parts: (placement, partition GUID, name)."""
    require_tool("sfdisk")
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
        input_bytes=gpt_script(disk_guid, parts, architecture).encode(),
        resolution="check the layout: partitions must fit the disk")


def disk_architecture(disk: Path, fmt: str) -> Architecture:
    """The architecture a disk boots, from its root partition's GPT type (Discoverable Partitions); amd64 when
    no partition says otherwise. The GPT is read through qemu-img, whatever the disk's format."""
    head = Path(tempfile.mkdtemp(prefix="assembler-gpt-")) / "head.raw"
    try:
        run(["qemu-img", "dd", "-f", fmt, "-O", "raw", "bs=512", f"count={GPT_HEAD_SECTORS}", f"if={disk}",
             f"of={head}"], resolution=f"check that {disk} is a {fmt} disk image")
        data = head.read_bytes()
    finally:
        shutil.rmtree(head.parent, ignore_errors=True)
    for arch, guid in ROOT_TYPE_GUIDS.items():
        if arch != "amd64" and uuid.UUID(guid).bytes_le in data[1024:]:
            return arch
    return "amd64"
