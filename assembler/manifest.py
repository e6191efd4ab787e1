"""manifest.json: what `assembler build` left in out/IMAGE/, as the one model every reader uses.

build.py writes the document (each phase adds its own fields, Phase.manifest_fields); publish, inspect, diff
and rebuild read it back through `read_manifest`. A manifest is untrusted input (an out/ directory can come
from anywhere): every output path must name a file inside out/IMAGE/, digests must be SHA-256, and a field a
newer assembler added is ignored rather than refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from assembler.config import Arch
from assembler.disk import PartitionResult
from assembler.errors import ConfigError

MANIFEST = "manifest.json"
SHA256 = r"^[0-9a-f]{64}$"


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Output(_Record):
    format: str
    path: str
    sha256: str | None = Field(None, pattern=SHA256)  # every build records it; publish requires it

    @field_validator("path")
    @classmethod
    def _in_out_dir(cls, value: str) -> str:
        """A file name in out/IMAGE/: no directory part, not . or .. (publish reads and uploads it)."""
        if not value or value in (".", "..") or any(c in value for c in "/\\\x00"):
            raise ValueError(f"{value!r} is not a file name in the output directory")
        return value


class PhaseEntry(_Record):
    name: str
    key: str
    cached: bool = False
    seconds: float = 0.0
    reason: str = ""
    source: str = "built"
    pushed: str | None = None


class RootfsRecord(_Record):
    path: str = ""
    sha256: str = Field(pattern=SHA256)
    size: int = 0


class OciLayer(_Record):
    digest: str
    step: str = ""


class OciRecord(_Record):
    digest: str
    layers: tuple[OciLayer, ...] = ()


class DiskRecord(_Record):
    """The disk phase's record (disk.DiskResult with its digest); the fields readers use, all optional so an
    older manifest still reads."""

    sha256: str | None = Field(None, pattern=SHA256)
    size: int | None = None
    firmware: tuple[str, ...] = ()
    secure_boot: bool = False  # signed shim, grub and kernel on the ESP: publish asks for Secure Boot + TPM
    architecture: Arch = "amd64"  # older manifests: amd64, the only one there was
    partitions: tuple[PartitionResult, ...] = ()
    kernel_version: str | None = None


class Manifest(_Record):
    image: str
    source_date_epoch: int | None = None
    phases: tuple[PhaseEntry, ...] = ()
    outputs: tuple[Output, ...] = ()
    tools: dict[str, str] = Field(default_factory=dict)
    seconds: float = 0.0
    oci: OciRecord | None = None
    rootfs: RootfsRecord | None = None
    base_image: str | None = None
    disk: DiskRecord | None = None
    nondeterministic: tuple[str, ...] = ()
    # Nested records of their own phases, carried as written (the boot report, the lock summary, ...).
    engine: dict[str, str] | None = None
    downloads: tuple[dict[str, str], ...] = ()
    lock: dict[str, Any] | None = None
    secrets: tuple[dict[str, Any], ...] = ()
    boot: dict[str, Any] | None = None

    def output(self, fmt: str) -> Output | None:
        return next((o for o in self.outputs if o.format == fmt), None)

    def phase_key(self, name: str) -> str | None:
        return next((p.key for p in self.phases if p.name == name), None)


def read_manifest(out: Path) -> Manifest:
    """out/IMAGE/manifest.json, validated; one ConfigError naming the fix when it is missing or malformed."""
    path = out / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{out} is not a build output directory (no {MANIFEST})",
                          resolution="pass out/IMAGE after `assembler build IMAGE`")
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and not data.get("image"):
            data = {**data, "image": out.name}
        return Manifest.model_validate(data)
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{path} is not a manifest this version of assembler can read", details=str(exc)[:2000],
                          resolution=f"rebuild: `assembler build {out.name}`") from exc
