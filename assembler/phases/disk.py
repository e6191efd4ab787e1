"""disk: the deterministic rootfs tar becomes a bootable raw disk (GPT, BIOS + UEFI, ext4 root)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from assembler import disk
from assembler.config import formats_dir, parse_size
from assembler.pipeline import Phase
from assembler.run import tool_version

RAW = "disk.raw"


def layout_for(config_layout: str | None, overrides: dict[str, object]) -> disk.DiskLayout:
    path = None
    if config_layout:
        candidate = Path(config_layout)
        path = candidate if candidate.exists() else formats_dir() / "layouts" / f"{config_layout}.yaml"
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
            "tools": {"mke2fs": tool_version("mke2fs", ["-V"]), "sgdisk": tool_version("sgdisk", ["-V"])},
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
        info = asdict(result) if is_dataclass(result) else result.model_dump(mode="json")  # type: ignore[union-attr]
        return {"disk": {"path": RAW, **info}}
