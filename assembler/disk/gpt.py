"""The GPT, written by sgdisk with every GUID given (disk and partitions), so it never varies."""

from __future__ import annotations

from pathlib import Path

from assembler.disk.layout import TYPE_GUIDS, PlannedPartition
from assembler.run import require_tool, run

SECTOR = 512


def write_gpt(disk: Path, disk_guid: str, parts: list[tuple[PlannedPartition, str, str]]) -> None:
    """parts: (placement, partition GUID, name); sectors computed from the byte placement."""
    require_tool("sgdisk")
    cmd: list[str] = ["sgdisk", "--clear", f"--disk-guid={disk_guid}"]
    for placed, guid, name in parts:
        first = placed.start // SECTOR
        last = (placed.start + placed.size) // SECTOR - 1
        n = placed.number
        cmd += [f"--new={n}:{first}:{last}", f"--typecode={n}:{TYPE_GUIDS[placed.role]}",
                f"--partition-guid={n}:{guid}", f"--change-name={n}:{name}"]
    run([*cmd, str(disk)], resolution="check the layout: partitions must fit the disk")
