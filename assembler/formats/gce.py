"""Google Compute Engine: `disk.raw` (a whole number of GiB) in a gzip tar written in oldgnu format.

That is the only layout `gcloud compute images create --source-uri` accepts; GNU tar's sparse support
(`-S`) keeps the tar small and fast when the disk is mostly empty.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from assembler.formats.base import GIB, BasePlugin, ConvertRequest, Options, into_existing, round_up

DISK_MEMBER = "disk.raw"


class GceOptions(Options):
    compressor: Literal["auto", "gzip", "pigz"] = Field(default=
        "auto", description="auto: pigz when installed (parallel, same gzip format), else gzip")
    level: int = Field(default=6, ge=1, le=9, description="gzip level: 1 is ~3x faster, a little larger")


class GceFormat(BasePlugin):
    name = "gce"
    extension = "-gce.tar.gz"
    result_format = "raw"
    options_model: ClassVar[type[Options]] = GceOptions

    def compressor(self) -> str:
        opts = self.options
        assert isinstance(opts, GceOptions)
        program = opts.compressor
        if program == "auto":
            program = "pigz" if shutil.which("pigz") else "gzip"
        # -n: no name or time stamp in the gzip header, so the output is reproducible.
        return f"{program} -{opts.level} -n"

    def commands(self, req: ConvertRequest) -> list[list[str]]:
        disk = req.work / DISK_MEMBER
        size = round_up(req.size(), GIB)
        return [
            ["qemu-img", "create", "-q", "-f", "raw", str(disk), str(size)],
            into_existing(req.source, req.source_format, disk, "raw"),
            ["tar", "--format=oldgnu", "--sparse", f"--mtime=@{req.source_date_epoch}",
             "--owner=0", "--group=0", "--numeric-owner", f"--use-compress-program={self.compressor()}",
             "-cf", str(req.dest), "-C", str(req.work), DISK_MEMBER],
        ]

    def inner_disk(self, req: ConvertRequest) -> tuple[Path, str]:
        return req.work / DISK_MEMBER, "raw"
