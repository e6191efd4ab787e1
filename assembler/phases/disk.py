"""disk: the deterministic rootfs tar becomes a bootable raw disk (GPT, BIOS + UEFI, ext4 root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assembler import disk
from assembler.config import parse_size
from assembler.pipeline import Phase

RAW = "disk.raw"


def layout_for(config_layout: str | None, overrides: dict[str, object]) -> disk.DiskLayout:
    path = disk.layout_path(config_layout) if config_layout else None
    return disk.load_layout(path, overrides or None)


class DiskPhase(Phase):
    name = "disk"
    kind = "disk"
    version = 1

    def _layout(self) -> disk.DiskLayout:
        cfg = self.ctx.spec.config.disk
        return layout_for(cfg.layout, dict(cfg.layout_overrides))

    def _size(self) -> int | None:
        size = self.ctx.disk_size or self.ctx.spec.config.disk.size
        return parse_size(size) if size else None

    def material(self) -> dict[str, Any]:
        cfg = self.ctx.spec.config
        return {
            "layout": self._layout().model_dump(mode="json"),
            "size": self._size(),
            "headroom": parse_size(cfg.disk.headroom),
            "cmdline": cfg.disk.cmdline,
            "source_date_epoch": cfg.source_date_epoch,
            "tools": disk.tool_versions(),
        }

    def execute(self, out: Path) -> dict[str, Any]:
        rootfs = self.input_entry("rootfs")
        cfg = self.ctx.spec.config
        result = disk.assemble_disk(
            rootfs.file("rootfs.tar"), out / RAW, self._layout(),
            seed=rootfs.meta["rootfs"]["sha256"], source_date_epoch=cfg.source_date_epoch,
            cmdline=cfg.disk.cmdline, size=self._size(), headroom=parse_size(cfg.disk.headroom),
            work_dir=out,
        )
        return {"disk": {**result.model_dump(mode="json"), "path": RAW}}
