"""convert: the raw disk in each requested format (qcow2, vmdk, vhd, gce, ova, kubevirt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assembler import formats
from assembler.config import FormatOption
from assembler.pipeline import Artefact, BuildRun, Phase
from assembler.run import tool_version
from assembler.store import Entry


class ConvertPhase(Phase):
    name = "convert"
    kind = "convert"
    version = 1

    def __init__(self, ctx: BuildRun, inputs: tuple[Phase, ...], fmt: str) -> None:
        super().__init__(ctx, inputs)
        self.fmt = fmt

    @property
    def label(self) -> str:
        return f"convert:{self.fmt}"

    def material(self) -> dict[str, Any]:
        return {
            "format": self.fmt,
            # The effective options (image.yaml's format_options over a profile's formats/NAME.yaml over the
            # plugin's defaults): what convert uses.
            "options": formats.resolve(self.fmt, self._options()).options.model_dump(mode="json"),
            "image": self.ctx.spec.name,
            "properties": self.ctx.spec.config.properties,
            "source_date_epoch": self.ctx.spec.config.source_date_epoch,
            "architecture": self.ctx.spec.arch,
            "qemu-img": tool_version("qemu-img"),
        }

    def _options(self) -> dict[str, FormatOption]:
        return dict(self.ctx.spec.config.format_options.get(self.fmt, {}))

    def artefacts(self, entry: Entry) -> list[Artefact]:
        out = entry.meta["output"]
        return [Artefact(entry.file(out["file"]), out["file"], entry.key, out["format"], out["sha256"])]

    def execute(self, out: Path) -> dict[str, Any]:
        disk = self.input_entry("disk")
        name = formats.output_name(self.ctx.spec.name, self.fmt)
        result = formats.convert(
            disk.file("disk.raw"), self.fmt, out / name,
            image_name=self.ctx.spec.name, properties=self.ctx.spec.config.properties,
            source_format="raw", source_date_epoch=self.ctx.spec.config.source_date_epoch,
            architecture=self.ctx.spec.arch, options=self._options(),
        )
        return {"output": {"format": self.fmt, "file": name, "sha256": result.sha256,
                           "virtual_size": result.virtual_size, "file_size": result.file_size}}
