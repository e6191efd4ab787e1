"""The format plugin protocol and what every plugin shares: the request, the result, probing a disk.

A plugin turns one disk into one artefact. `commands(req)` returns the exact external commands (argv lists,
golden-testable); `convert(req)` runs them in a scratch directory beside the destination, applies any
Python post-steps (footers, descriptors, tars) and renames the finished artefact into place, so a failure
never leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from assembler.config import DEFAULT_SOURCE_DATE_EPOCH, Arch
from assembler.errors import ConfigError, DiskError
from assembler.fsutil import sha256_file
from assembler.run import output, require_tool, run

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
VHD_FOOTER_SIZE = 512
# qemu-img format names a source disk may have.
SOURCE_FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx")


class DiskFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VHD = "vhd"
    GCE = "gce"
    OVA = "ova"
    KUBEVIRT = "kubevirt"


@dataclass(frozen=True)
class ConvertRequest:
    """One conversion. `virtual_size` and `workdir` are filled in by convert(); tests may pin them."""

    source: Path
    source_format: str
    dest: Path
    image_name: str
    properties: Mapping[str, str] = field(default_factory=dict)
    virtual_size: int | None = None  # the source's virtual size; probed with qemu-img when None
    workdir: Path | None = None  # where intermediate files go; the destination's directory when None
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH  # timestamps inside tars, footers, configs
    architecture: Arch = "amd64"  # what the disk boots on (a containerDisk's image config names it)

    @property
    def work(self) -> Path:
        return self.workdir if self.workdir is not None else self.dest.parent

    def size(self) -> int:
        if self.virtual_size is None:
            return virtual_size(self.source, self.source_format)
        return self.virtual_size


@dataclass(frozen=True)
class FormatResult:
    path: Path
    format: str
    sha256: str
    virtual_size: int  # of the disk inside the artefact
    file_size: int  # bytes of the artefact (apparent size)
    disk_usage: int = 0  # bytes allocated on the host file system (sparse files use less)
    image_ref: str | None = None  # kubevirt: the tag loaded into the container engine


class Options(BaseModel):
    """Base of every plugin's declared options."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@runtime_checkable
class FormatPlugin(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def extension(self) -> str: ...  # appended to the image name: ".qcow2", "-gce.tar.gz"

    @property
    def options_model(self) -> type[BaseModel]: ...

    @property
    def options(self) -> BaseModel: ...

    def configure(self, options: Mapping[str, Any]) -> FormatPlugin: ...

    def commands(self, req: ConvertRequest) -> list[list[str]]: ...

    def convert(self, req: ConvertRequest) -> FormatResult: ...


# ---------------------------------------------------------------------------------------------- probing


def qemu_img_info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """`qemu-img info --output=json`; `fmt` skips probing (needed for fixed VHDs, which probe as raw)."""
    require_tool("qemu-img", "qemu-img inspects and converts disk images")
    if not path.is_file():
        raise ConfigError(f"no such disk: {path}", resolution="pass the path of an existing disk image")
    cmd = ["qemu-img", "info", "--output=json", *(["-f", fmt] if fmt else []), str(path)]
    info: dict[str, Any] = json.loads(output(cmd, resolution=f"is {path} a disk image?"))
    return info


def has_vhd_footer(path: Path) -> bool:
    """A fixed VHD is raw data plus a 512-byte footer starting with the cookie 'conectix'."""
    size = path.stat().st_size
    if size < VHD_FOOTER_SIZE:
        return False
    with path.open("rb") as handle:
        handle.seek(size - VHD_FOOTER_SIZE)
        return handle.read(8) == b"conectix"


def detect_format(path: Path) -> str:
    """The qemu-img format name of a disk: raw, qcow2, vmdk, vpc (fixed or dynamic VHD), ..."""
    fmt = str(qemu_img_info(path)["format"])
    if fmt == "raw" and has_vhd_footer(path):
        return "vpc"
    return fmt


def allocated_bytes(path: Path, fmt: str) -> int:
    """Guest bytes holding data (from the image's own allocation map, so it depends only on content)."""
    extents = json.loads(output(["qemu-img", "map", "--output=json", "-f", fmt, str(path)]))
    return sum(int(extent["length"]) for extent in extents if extent.get("data"))


def virtual_size(path: Path, fmt: str) -> int:
    return int(qemu_img_info(path, fmt)["virtual-size"])


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


# ------------------------------------------------------------------------------------------ plugin base


class BasePlugin:
    """Shared machinery: option validation, the scratch directory, running commands, the result."""

    name: ClassVar[str]
    extension: ClassVar[str]
    options_model: ClassVar[type[Options]] = Options
    result_format: ClassVar[str]  # qemu-img format of the disk inside (for qemu-img info/check)

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.options_model()

    def configure(self, options: Mapping[str, Any]) -> Self:
        """A copy of this plugin with validated options (plugins themselves are never mutated)."""
        try:
            parsed = self.options_model.model_validate(dict(options))
        except ValidationError as exc:
            fields = ", ".join(self.options_model.model_fields) or "none"
            raise ConfigError(f"invalid options for format {self.name}", details=str(exc),
                              resolution=f"valid options for {self.name}: {fields}") from exc
        return type(self)(parsed)

    def commands(self, req: ConvertRequest) -> list[list[str]]:
        raise NotImplementedError

    def finish(self, req: ConvertRequest) -> dict[str, Any]:
        """Python post-steps after the commands ran; returns extra FormatResult fields (image_ref)."""
        return {}

    def inner_disk(self, req: ConvertRequest) -> tuple[Path, str]:
        """The disk image to describe in the result (the artefact itself unless it is an archive)."""
        return req.dest, self.result_format

    def convert(self, req: ConvertRequest) -> FormatResult:
        check_source(req.source)
        require_tool("qemu-img", "qemu-img converts disk images")
        req.dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{req.dest.name}.", suffix=".part", dir=req.dest.parent))
        try:
            # The artefact keeps its final basename while it is built: a VMDK embeds its own file name.
            inner = replace(req, dest=work / req.dest.name, workdir=work, virtual_size=req.size())
            for argv in self.commands(inner):
                run(argv, resolution=f"check the source disk {req.source} and free space in {work.parent}")
            extras = self.finish(inner)
            result = replace(self.describe(inner), **extras)
            os.replace(inner.dest, req.dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return replace(result, path=req.dest)

    def describe(self, req: ConvertRequest) -> FormatResult:
        disk, fmt = self.inner_disk(req)
        size = virtual_size(disk, fmt) if disk.exists() else req.size()
        stat = req.dest.stat()
        return FormatResult(path=req.dest, format=self.name, sha256=sha256_file(req.dest), virtual_size=size,
                            file_size=stat.st_size, disk_usage=stat.st_blocks * 512)


def check_source(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"no such disk: {path}", resolution="pass the path of an existing disk image")


def qemu_convert(src: Path, src_fmt: str, dest: Path, out_fmt: str, *, options: str = "",
                 flags: tuple[str, ...] = ()) -> list[str]:
    """`qemu-img convert` argv. qemu-img skips zero clusters, so sparse input stays sparse output."""
    opts = ["-o", options] if options else []
    return ["qemu-img", "convert", "-f", src_fmt, "-O", out_fmt, *flags, *opts, str(src), str(dest)]


def into_existing(src: Path, src_fmt: str, dest: Path, out_fmt: str) -> list[str]:
    """Copy into a target created beforehand (larger than the source): the padding stays zero and sparse."""
    return ["qemu-img", "convert", "-n", "--target-is-zero", "-f", src_fmt, "-O", out_fmt,
            str(src), str(dest)]


def padded_source(req: ConvertRequest, unit: int) -> tuple[list[list[str]], Path, str]:
    """Commands making a sparse raw copy of the source rounded up to `unit`, unless it already fits."""
    size = req.size()
    if size % unit == 0:
        return [], req.source, req.source_format
    padded = req.work / "padded.raw"
    cmds = [["qemu-img", "create", "-q", "-f", "raw", str(padded), str(round_up(size, unit))],
            into_existing(req.source, req.source_format, padded, "raw")]
    return cmds, padded, "raw"


def require_size_fits(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise DiskError(f"{what} is too large ({size} bytes > {limit})",
                        resolution="make the disk smaller (disk.size in image.yaml)")
