"""Raw disk assembly: rootfs tar -> GPT disk with an ext4 root, bootable on BIOS and UEFI."""

from assembler.disk.assemble import DEFAULT_CMDLINE, DiskResult, PartitionResult, assemble_disk, tool_versions
from assembler.disk.ext4 import read_members
from assembler.disk.grub import boot_chain
from assembler.disk.layout import DiskLayout, Partition, RootFsOptions, layout_path, load_layout
from assembler.tarindex import TarIndex, index_tar, read_index

__all__ = [
    "DEFAULT_CMDLINE",
    "DiskLayout",
    "DiskResult",
    "Partition",
    "PartitionResult",
    "RootFsOptions",
    "TarIndex",
    "assemble_disk",
    "boot_chain",
    "index_tar",
    "layout_path",
    "load_layout",
    "read_index",
    "read_members",
    "tool_versions",
]
