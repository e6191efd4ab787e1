"""The EFI system partition: FAT32 made in place in the disk file, files copied in with mtools.

`mkfs.vfat --invariant` fixes the boot sector's time fields, `-i` sets the volume id (given after
--invariant, which would otherwise reset it), and mtools stamps new directories and files with
SOURCE_DATE_EPOCH: the ESP is a function of its inputs.
"""

from __future__ import annotations

from pathlib import Path

from assembler.run import require_tool, run

SECTOR = 512


def make_esp(disk: Path, offset: int, size: int, *, serial: str, label: str, epoch: int,
             files: dict[str, Path]) -> None:
    """Format the partition at `offset` and copy `files` ({'EFI/BOOT/BOOTX64.EFI': source}) into it."""
    for tool in ("mkfs.vfat", "mmd", "mcopy"):
        require_tool(tool)
    # Cluster size and geometry are given, not guessed: mkfs.vfat would derive them from the size of
    # the whole disk file and pick clusters too large for a valid FAT32 in a small partition.
    run(["mkfs.vfat", "--invariant", "-i", serial, "-F", "32", "-n", label[:11].upper(), "-S", str(SECTOR),
         "-s", str(_sectors_per_cluster(size)), "-g", "64/32", "-h", str(offset // SECTOR),
         "--offset", str(offset // SECTOR), str(disk), str(size // 1024)])
    image = f"{disk}@@{offset}"
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}  # FAT times are local
    for directory in _parents(files):
        run(["mmd", "-i", image, f"::/{directory}"], env=env)
    for dest, source in sorted(files.items()):
        run(["mcopy", "-i", image, "-m", "-o", str(source), f"::/{dest}"], env=env)


def _sectors_per_cluster(size: int) -> int:
    """Microsoft's FAT32 table: 512-byte clusters up to 260 MiB, 4 KiB up to 8 GiB, then 8/16 KiB."""
    if size <= 260 * 1024**2:
        return 1
    if size <= 8 * 1024**3:
        return 8
    return 16 if size <= 16 * 1024**3 else 32


def _parents(files: dict[str, Path]) -> list[str]:
    """Every directory the files need, parents first."""
    dirs: set[str] = set()
    for dest in files:
        parts = dest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs, key=lambda d: (d.count("/"), d))
