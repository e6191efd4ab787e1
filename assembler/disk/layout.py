"""The partition layout as data: declared in YAML, validated, overridable; sizes and ids derived from it.

Everything here is pure (no subprocess, no disk I/O besides reading the YAML), so it is unit-tested.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from assembler.errors import ConfigError, DiskError
from assembler.sizes import parse_size

MiB = 1024**2
ALIGN = MiB
# Room before the first partition (protective MBR, GPT header, 128 entries) and after the last one
# (backup GPT: 33 sectors); both rounded to the alignment.
GPT_HEAD = MiB
GPT_TAIL = MiB
# Smallest FAT32 that mkfs.vfat makes with 512-byte sectors (65525 clusters of one sector + FATs).
ESP_MIN = 33 * MiB

DEFAULT_LAYOUT = Path(__file__).resolve().parents[2] / "formats" / "layouts" / "gpt-bios-uefi.yaml"

Role = Literal["bios_boot", "esp", "root"]
Firmware = Literal["bios", "uefi"]
Architecture = Literal["amd64", "arm64"]  # Debian's names (config.Arch)

# GPT partition type GUIDs (the sgdisk short codes in comments).
TYPE_GUIDS: dict[str, str] = {
    "bios_boot": "21686148-6449-6E6F-744E-656564454649",  # EF02
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EF00
    "root": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # 8304, discoverable x86-64 root
}
# The root partition's type names the architecture (the Discoverable Partitions Specification): what
# `assembler boot` reads to pick the emulator.
ROOT_TYPE_GUIDS: dict[Architecture, str] = {
    "amd64": TYPE_GUIDS["root"],
    "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",  # 8305, discoverable AArch64 root
}


def type_guid(role: str, architecture: Architecture = "amd64") -> str:
    return ROOT_TYPE_GUIDS[architecture] if role == "root" else TYPE_GUIDS[role]
ROLE_FS: dict[str, str] = {"bios_boot": "none", "esp": "vfat", "root": "ext4"}
# Fixed namespace so that ids depend only on the seed (the image's content digest) and the role.
ID_NAMESPACE = uuid.UUID("6f1c3b0e-5d0a-5e0b-9d43-0a55e3b1e7d1")

def align_up(value: int, alignment: int = ALIGN) -> int:
    return -(-value // alignment) * alignment


def derive_uuid(seed: str, role: str, kind: str) -> uuid.UUID:
    """A stable id for (seed, role, kind): the same image content gives the same disk ids."""
    return uuid.uuid5(ID_NAMESPACE, f"{seed}\0{role}\0{kind}")


def derive_fat_serial(seed: str) -> str:
    """The ESP's 32-bit volume id (what fstab calls its UUID), as 8 upper-case hex digits."""
    return derive_uuid(seed, "esp", "fs-serial").hex[:8].upper()


def fat_uuid(serial: str) -> str:
    """The form blkid and fstab use for a FAT volume id: XXXX-XXXX."""
    return f"{serial[:4]}-{serial[4:]}"


class Partition(BaseModel):
    """One GPT partition; size None means 'the rest of the disk' (root only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    size: int | None = None
    fs: Literal["none", "vfat", "ext4"] | None = None
    # GPT names hold 36 UTF-16 code units; written into sfdisk's script, so no quotes, commas or newlines.
    label: str = Field(default="", max_length=36, pattern=r"^[A-Za-z0-9 ._+-]*$")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)

    @model_validator(mode="after")
    def _check(self) -> Partition:
        expected = ROLE_FS[self.role]
        if self.fs is not None and self.fs != expected:
            raise ValueError(f"partition {self.role} must have fs {expected!r}, not {self.fs!r}")
        if self.size is not None and (self.size <= 0 or self.size % ALIGN):
            raise ValueError(f"partition {self.role}: size {self.size} is not a positive multiple of 1 MiB")
        if self.size is None and self.role != "root":
            raise ValueError(f"partition {self.role} needs a size (only root may take the rest)")
        if self.role == "esp" and self.size is not None and self.size < ESP_MIN:
            raise ValueError(f"the ESP must be at least {ESP_MIN // MiB} MiB for FAT32")
        return self

    @property
    def filesystem(self) -> str:
        return self.fs or ROLE_FS[self.role]


class RootFsOptions(BaseModel):
    """How the ext4 root is made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(default="root", max_length=16)
    mount_options: str = Field("errors=remount-ro", pattern=r"^[A-Za-z0-9_=,.:/+-]+$")  # one fstab field
    reserved_percent: int = Field(default=1, ge=0, le=50)
    features: tuple[str, ...] = (
        "has_journal", "extent", "huge_file", "flex_bg", "metadata_csum", "64bit", "dir_nlink", "extra_isize",
    )
    size_factor: float = Field(default=1.1, ge=1.0, le=4.0)
    inode_ratio: int = Field(default=16384, ge=4096)


class DiskLayout(BaseModel):
    """Partition table, partitions in disk order, firmware to boot from, root filesystem options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: Literal["gpt"] = "gpt"
    partitions: tuple[Partition, ...]
    firmware: tuple[Firmware, ...] = ("bios", "uefi")
    architecture: Architecture = "amd64"
    root: RootFsOptions = RootFsOptions()

    @model_validator(mode="after")
    def _check(self) -> DiskLayout:
        roles = [p.role for p in self.partitions]
        duplicates = sorted({r for r in roles if roles.count(r) > 1})
        if duplicates:
            raise ValueError(f"each role may appear once; repeated: {', '.join(duplicates)}")
        if "root" not in roles:
            raise ValueError("the layout needs a root partition")
        if not self.firmware:
            raise ValueError("firmware must list at least one of: bios, uefi")
        if len(set(self.firmware)) != len(self.firmware):
            raise ValueError("firmware lists a value twice")
        if "bios" in self.firmware and self.architecture != "amd64":
            raise ValueError(f"firmware 'bios' boots amd64 only; an {self.architecture} disk boots uefi")
        if "bios" in self.firmware and "bios_boot" not in roles:
            raise ValueError("firmware 'bios' needs a bios_boot partition (grub's core.img lives there)")
        if "uefi" in self.firmware and "esp" not in roles:
            raise ValueError("firmware 'uefi' needs an esp partition")
        rest = [p.role for p in self.partitions if p.size is None]
        if rest and self.partitions[-1].size is not None:
            raise ValueError("the partition without a size (taking the rest) must be the last one")
        return self

    def partition(self, role: str) -> Partition | None:
        return next((p for p in self.partitions if p.role == role), None)


def _merge(base: Any, override: Any) -> Any:
    """Deep merge; a `partitions` list merges item by item on `role` so one field can be overridden."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if key == "partitions" and isinstance(value, list) and isinstance(base.get(key), list):
                merged[key] = _merge_partitions(base[key], value)
            else:
                merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return override


def _merge_partitions(base: list[Any], override: list[Any]) -> list[Any]:
    result = [dict(p) if isinstance(p, dict) else p for p in base]
    for item in override:
        role = item.get("role") if isinstance(item, dict) else None
        target = next((p for p in result if isinstance(p, dict) and p.get("role") == role), None)
        if target is None:
            result.append(item)
        elif item.get("remove"):
            result.remove(target)
        else:
            target.update(item)
    return result


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(layout)"
        lines.append(f"{where}: {err['msg']}")
    return "\n".join(lines)


def layout_from_dict(data: dict[str, Any], source: str = "layout") -> DiskLayout:
    try:
        return DiskLayout.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid disk layout in {source}",
            details=_format_errors(exc),
            resolution=f"fix the layout (see {DEFAULT_LAYOUT.name} for a valid one)",
        ) from exc


def layout_path(name_or_path: str) -> Path:
    """A layout name (file under formats/layouts/, with or without .yaml) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    named = DEFAULT_LAYOUT.parent / (name_or_path if candidate.suffix else f"{name_or_path}.yaml")
    if named.exists():
        return named
    choices = sorted(p.stem for p in DEFAULT_LAYOUT.parent.glob("*.yaml"))
    raise ConfigError(f"unknown disk layout {name_or_path!r}", details=f"known layouts: {', '.join(choices)}",
                      resolution="name a layout under formats/layouts/ or give a path to a YAML file")


def load_layout(path: Path | None = None, overrides: dict[str, Any] | None = None) -> DiskLayout:
    """Read a layout YAML (default: formats/layouts/gpt-bios-uefi.yaml) and apply per-image overrides.

    In `overrides`, a `partitions` list is merged by role; `{role: esp, remove: true}` drops one.
    """
    source = path or DEFAULT_LAYOUT
    try:
        data = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read disk layout {source}", details=str(exc),
                          resolution="check the path and the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"disk layout {source} is not a mapping", resolution="see the default layout")
    if overrides:
        data = _merge(data, overrides)
    return layout_from_dict(data, str(source))


# ---- sizes ---------------------------------------------------------------------------------------

class PlannedPartition(BaseModel):
    """Where one partition goes on the disk (bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    number: int
    role: Role
    start: int
    size: int


def root_fs_size(content_bytes: int, layout: DiskLayout, headroom: int) -> int:
    """Root filesystem size for the content: content * factor + ext4 overhead + headroom, MiB-aligned."""
    return align_up(root_fs_minimum(content_bytes, layout) + headroom)


def root_fs_minimum(content_bytes: int, layout: DiskLayout) -> int:
    """Smallest root that holds the content: factor for slack, plus journal and metadata overhead."""
    scaled = int(content_bytes * layout.root.size_factor)
    # ext4 metadata: inode tables (256 B per inode_ratio bytes), bitmaps, group descriptors; journal up
    # to 64 MiB (mke2fs picks 16-64 MiB for 128 MiB-4 GiB filesystems, 128 MiB above); the reserve.
    metadata = scaled * 256 // layout.root.inode_ratio + scaled // 64
    journal = 64 * MiB if scaled < 4 * 1024**3 else 128 * MiB
    reserve = scaled * layout.root.reserved_percent // 100
    return align_up(scaled + metadata + journal + reserve + 16 * MiB)


def plan_partitions(layout: DiskLayout, root_size: int) -> list[PlannedPartition]:
    """Place partitions back to back from 1 MiB, each start and size aligned to 1 MiB."""
    planned = []
    offset = GPT_HEAD
    for number, part in enumerate(layout.partitions, start=1):
        size = root_size if part.role == "root" else part.size
        assert size is not None  # validated: only root may omit its size
        planned.append(PlannedPartition(number=number, role=part.role, start=offset, size=size))
        offset += size
    return planned


def fixed_parts_size(layout: DiskLayout) -> int:
    return sum(p.size or 0 for p in layout.partitions if p.role != "root")


def disk_size_for(layout: DiskLayout, root_size: int) -> int:
    return align_up(GPT_HEAD + fixed_parts_size(layout) + root_size + GPT_TAIL)


def choose_root_size(layout: DiskLayout, content_bytes: int, *, size: int | None, headroom: int) -> int:
    """Root partition size: from the content (plus headroom), or what is left of a fixed disk size."""
    if size is None:
        root = layout.partition("root")
        if root is not None and root.size is not None:
            minimum = root_fs_minimum(content_bytes, layout)
            if root.size < minimum:
                raise DiskError(
                    f"the root partition ({root.size // MiB} MiB) is too small for the content",
                    details=f"needs at least {minimum // MiB} MiB",
                    resolution=f"set the root partition size to {minimum // MiB}MiB or more, or drop it",
                )
            return root.size
        return root_fs_size(content_bytes, layout, headroom)
    if size % ALIGN:
        raise DiskError(f"disk size {size} is not a multiple of 1 MiB",
                        resolution=f"use {align_up(size) // MiB}MiB")
    root_size = size - GPT_HEAD - GPT_TAIL - fixed_parts_size(layout)
    minimum = root_fs_minimum(content_bytes, layout)
    if root_size < minimum:
        needed = disk_size_for(layout, minimum)
        raise DiskError(
            f"the content does not fit a {size // MiB} MiB disk",
            details=f"content {content_bytes // MiB} MiB needs a root of {minimum // MiB} MiB; "
            f"a disk of at least {needed // MiB} MiB",
            resolution=f"raise --size to {needed // MiB}MiB or more (or drop --size to fit the content)",
        )
    return root_size
