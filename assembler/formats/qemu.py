"""Plain disk formats written by qemu-img: raw, qcow2, vmdk (streamOptimized) and vhd (Azure fixed VPC)."""

from __future__ import annotations

import re
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from assembler.formats.base import (
    MIB,
    VHD_FOOTER_SIZE,
    BasePlugin,
    ConvertRequest,
    Options,
    into_existing,
    padded_source,
    qemu_convert,
    round_up,
)

VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z: VHD footers count seconds from here


class RawOptions(Options):
    pass


class RawFormat(BasePlugin):
    name = "raw"
    extension = ".raw"
    result_format = "raw"
    options_model: ClassVar[type[Options]] = RawOptions

    def commands(self, req: ConvertRequest) -> list[list[str]]:
        return [qemu_convert(req.source, req.source_format, req.dest, "raw")]


class Qcow2Options(Options):
    compress: bool = Field(default=False, description="compress clusters (smaller, much slower to write)")
    compression_type: Literal["zlib", "zstd"] = Field(default=
        "zlib", description="zstd needs QEMU >= 5.1 on every host that reads the image")
    cluster_size: int = Field(default=65536, description="bytes; a power of two from 512 to 2 MiB")
    out_of_order: bool = Field(default=False, description="qemu-img -W: compressed writes ~25% faster on "
                               "2 cores, but the cluster layout (and so the file's hash) varies between runs")

    @field_validator("cluster_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 512 or value > 2 * MIB or value & (value - 1):
            raise ValueError("cluster_size must be a power of two between 512 and 2097152")
        return value


class Qcow2Format(BasePlugin):
    name = "qcow2"
    extension = ".qcow2"
    result_format = "qcow2"
    options_model: ClassVar[type[Options]] = Qcow2Options

    def commands(self, req: ConvertRequest) -> list[list[str]]:
        opts = self.options
        assert isinstance(opts, Qcow2Options)
        create_opts = f"compat=1.1,cluster_size={opts.cluster_size}"
        flags: tuple[str, ...] = ("-W",) if opts.out_of_order else ()
        if opts.compress:
            create_opts += f",compression_type={opts.compression_type}"
            flags = ("-c", *flags)
        return [qemu_convert(req.source, req.source_format, req.dest, "qcow2",
                             options=create_opts, flags=flags)]


class VmdkOptions(Options):
    subformat: Literal["streamOptimized", "monolithicSparse"] = Field(default=
        "streamOptimized", description="streamOptimized is what OVA/vSphere and AWS VM Import read")
    adapter_type: Literal["ide", "lsilogic", "buslogic", "legacyESX"] = "lsilogic"
    hwversion: int | None = Field(default=None, ge=4, le=21, description="ddb.virtualHWVersion (default 4)")


def vmdk_commands(req: ConvertRequest, opts: VmdkOptions, dest: Path) -> list[list[str]]:
    """VMware rejects disks whose capacity is not a whole MiB, so pad the source first when needed."""
    cmds, src, src_fmt = padded_source(req, MIB)
    create_opts = f"subformat={opts.subformat},adapter_type={opts.adapter_type}"
    if opts.hwversion is not None:
        create_opts += f",hwversion={opts.hwversion}"
    # No -W: a streamOptimized VMDK must be written front to back.
    return [*cmds, qemu_convert(src, src_fmt, dest, "vmdk", options=create_opts)]


def stable_cid(req: ConvertRequest) -> str:
    return f"{zlib.crc32(f'{req.image_name}:{req.size()}'.encode()):08x}"


def normalize_vmdk_cid(path: Path, cid: str) -> None:
    """qemu-img writes a random content ID into the descriptor, unpadded ("CID=e2bf35" one time in 16);
    rewrite it to a fixed 8-digit value so identical inputs give identical files. The descriptor lives in
    a NUL-padded region whose place and size the sparse header gives (in sectors)."""
    with path.open("r+b") as handle:
        header = handle.read(44)
        if header[:4] != b"KDMV":
            return
        offset, size = (value * 512 for value in struct.unpack_from("<QQ", header, 28))
        handle.seek(offset)
        region = handle.read(size)
        text = region.split(b"\0", 1)[0]
        fixed = re.sub(rb"(?m)^CID=[0-9a-f]{1,8}$", b"CID=" + cid.encode(), text, count=1)
        if len(fixed) >= size:
            return
        handle.seek(offset)
        handle.write(fixed.ljust(len(region), b"\0"))


class VmdkFormat(BasePlugin):
    name = "vmdk"
    extension = ".vmdk"
    result_format = "vmdk"
    options_model: ClassVar[type[Options]] = VmdkOptions

    def commands(self, req: ConvertRequest) -> list[list[str]]:
        assert isinstance(self.options, VmdkOptions)
        return vmdk_commands(req, self.options, req.dest)

    def finish(self, req: ConvertRequest) -> dict[str, Any]:
        normalize_vmdk_cid(req.dest, stable_cid(req))
        return {}


class VhdOptions(Options):
    subformat: Literal["fixed", "dynamic"] = Field(default="fixed", description="Azure accepts fixed only")
    align_mib: int = Field(default=1, ge=1, description="round the virtual size up to N MiB (Azure: 1)")


class VhdFormat(BasePlugin):
    """Azure-ready VHD: fixed VPC, exact size (force_size), virtual size a whole number of MiB."""

    name = "vhd"
    extension = ".vhd"
    result_format = "vpc"
    options_model: ClassVar[type[Options]] = VhdOptions

    def commands(self, req: ConvertRequest) -> list[list[str]]:
        opts = self.options
        assert isinstance(opts, VhdOptions)
        size = round_up(req.size(), opts.align_mib * MIB)
        # Creating the target at the rounded size and copying into it pads without an intermediate file.
        create = ["qemu-img", "create", "-q", "-f", "vpc", "-o", f"subformat={opts.subformat},force_size=on",
                  str(req.dest), str(size)]
        return [create, into_existing(req.source, req.source_format, req.dest, "vpc")]

    def finish(self, req: ConvertRequest) -> dict[str, Any]:
        normalize_vhd_footer(req.dest, req.source_date_epoch, vhd_uuid(req))
        return {}


def vhd_uuid(req: ConvertRequest) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"assembler:{req.image_name}:{req.size()}:{req.source_date_epoch}")


def vhd_checksum(footer: bytes) -> int:
    """One's complement of the byte sum, with the checksum field (offset 64) counted as zero."""
    total = sum(footer[:64]) + sum(footer[68:])
    return ~total & 0xFFFFFFFF


def patch_footer(footer: bytes, epoch: int, disk_id: uuid.UUID) -> bytes:
    data = bytearray(footer)
    struct.pack_into(">I", data, 24, max(epoch - VHD_EPOCH, 0))
    data[68:84] = disk_id.bytes
    struct.pack_into(">I", data, 64, vhd_checksum(bytes(data)))
    return bytes(data)


def normalize_vhd_footer(path: Path, epoch: int, disk_id: uuid.UUID) -> None:
    """qemu-img stamps the creation time and a random UUID in the footer; pin both (reproducible
    output), keeping the checksum valid. Dynamic VHDs carry a copy of the footer at offset 0."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        offsets = [size - VHD_FOOTER_SIZE]
        handle.seek(0)
        if handle.read(8) == b"conectix":
            offsets.append(0)
        for offset in offsets:
            handle.seek(offset)
            footer = handle.read(VHD_FOOTER_SIZE)
            if footer[:8] != b"conectix":
                continue
            handle.seek(offset)
            handle.write(patch_footer(footer, epoch, disk_id))
