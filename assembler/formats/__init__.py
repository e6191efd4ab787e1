"""Output formats: an explicit registry of plugins keyed by DiskFormat, plus declarative profiles.

- `builtin_formats()` returns fresh plugin objects every call; nothing is registered at import time.
- `load_formats()` adds third-party plugins from the entry-point group `assembler.formats` (an entry
  point names a plugin class or object; builtins cannot be overridden).
- Profiles are `formats/NAME.yaml` (`format:` + `options:`), validated by their plugin. A name in an
  image's `formats:` list is a profile when such a file exists, else a format with default options.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assembler.config import DEFAULT_SOURCE_DATE_EPOCH, Arch, formats_dir
from assembler.disk.gpt import disk_architecture
from assembler.errors import ConfigError
from assembler.formats.base import (
    ConvertRequest,
    DiskFormat,
    FormatPlugin,
    FormatResult,
    check_source,
    detect_format,
)
from assembler.formats.gce import GceFormat
from assembler.formats.kubevirt import KubevirtFormat
from assembler.formats.ova import OvaFormat
from assembler.formats.qemu import Qcow2Format, RawFormat, VhdFormat, VmdkFormat
from assembler.log import log
from assembler.plugins import load_plugins

__all__ = [
    "ENTRY_POINT_GROUP",
    "ConvertRequest",
    "DiskFormat",
    "FormatPlugin",
    "FormatProfile",
    "FormatResult",
    "builtin_formats",
    "convert",
    "detect_format",
    "load_formats",
    "load_profiles",
    "output_name",
    "resolve",
    "validate_format_names",
]

ENTRY_POINT_GROUP = "assembler.formats"
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def builtin_formats() -> dict[DiskFormat, FormatPlugin]:
    return {
        DiskFormat.RAW: RawFormat(),
        DiskFormat.QCOW2: Qcow2Format(),
        DiskFormat.VMDK: VmdkFormat(),
        DiskFormat.VHD: VhdFormat(),
        DiskFormat.GCE: GceFormat(),
        DiskFormat.OVA: OvaFormat(),
        DiskFormat.KUBEVIRT: KubevirtFormat(),
    }


def load_formats() -> dict[str, FormatPlugin]:
    """Builtins plus the plugins installed under the entry-point group `assembler.formats`."""
    builtins = {fmt.value: plugin for fmt, plugin in builtin_formats().items()}
    return load_plugins(builtins, entry_points(group=ENTRY_POINT_GROUP), FormatPlugin, noun="format",
                        needs="name, extension, options_model, options, configure, commands and convert")


# ---------------------------------------------------------------------------------------------- profiles


class FormatProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    format: str
    options: dict[str, Any] = Field(default_factory=dict)


def load_profiles(directory: Path | None = None,
                  formats: Mapping[str, FormatPlugin] | None = None) -> dict[str, FormatProfile]:
    """Every `*.yaml` in the profiles directory, each validated by the plugin it names."""
    root = directory if directory is not None else formats_dir()
    known = formats if formats is not None else load_formats()
    profiles: dict[str, FormatProfile] = {}
    for path in sorted(root.glob("*.yaml")) if root.is_dir() else []:
        profile = _read_profile(path)
        if profile.format not in known:
            raise ConfigError(f"format profile {path} names an unknown format {profile.format!r}",
                              resolution=f"use one of: {', '.join(known)}")
        known[profile.format].configure(profile.options)  # raises ConfigError naming the bad option
        profiles[profile.name] = profile
    return profiles


def _read_profile(path: Path) -> FormatProfile:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return FormatProfile.model_validate({"name": path.stem, **data})
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ConfigError(f"invalid format profile {path}", details=str(exc),
                          resolution="a profile has `format:` and optional `description:`, `options:`"
                          ) from exc


def resolve(name: DiskFormat | str, options: Mapping[str, Any] | None = None, *,
            profile_dir: Path | None = None) -> FormatPlugin:
    """The configured plugin for a format or profile name; `options` override the profile's."""
    key = name.value if isinstance(name, DiskFormat) else str(name)
    formats = load_formats()
    profiles = load_profiles(profile_dir, formats)
    if key in profiles:
        profile = profiles[key]
        return formats[profile.format].configure({**profile.options, **(options or {})})
    if key in formats:
        return formats[key].configure(options or {})
    valid = sorted({*formats, *profiles})
    raise ConfigError(f"unknown format: {key}", resolution=f"use one of: {', '.join(valid)}")


def validate_format_names(names: Sequence[str],
                          options: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The names, deduplicated in order, after checking each is a known format or profile, and that each of
    an image's `format_options` names one and holds valid options (before anything is built)."""
    unique = list(dict.fromkeys(str(n.value if isinstance(n, DiskFormat) else n) for n in names))
    for name in unique:
        resolve(name)
    for name, opts in (options or {}).items():
        try:
            resolve(name, opts)
        except ConfigError as exc:
            raise ConfigError(f"format_options.{name} in image.yaml: {exc.brief}", details=exc.details,
                              resolution=exc.resolution) from None
    return unique


def output_name(image: str, fmt: DiskFormat | str) -> str:
    """IMAGE.qcow2, IMAGE-gce.tar.gz, IMAGE.ova, IMAGE-containerdisk.tar, ..."""
    return image + resolve(fmt).extension


# ----------------------------------------------------------------------------------------------- convert


def convert(
    source: Path,
    fmt: DiskFormat | str,
    dest: Path,
    *,
    image_name: str,
    properties: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
    source_format: str | None = None,
    source_date_epoch: int | None = None,
    architecture: Arch | None = None,
) -> FormatResult:
    """Convert `source` into `dest` (a file path, or an existing directory to put output_name() in). The
    architecture is read from the disk's GPT when the caller does not know it."""
    plugin = resolve(fmt, options)
    check_source(source)
    if not IMAGE_NAME.fullmatch(image_name):
        raise ConfigError(f"invalid image name: {image_name!r}",
                          resolution="use letters, digits, '.', '_' and '-' (it names the output files)")
    if dest.is_dir():
        dest = dest / (image_name + plugin.extension)
    if dest.resolve() == source.resolve():
        raise ConfigError(f"output would overwrite the source: {dest}",
                          resolution="choose another output path")
    source_format = source_format or detect_format(source)
    req = ConvertRequest(
        source=source, source_format=source_format, dest=dest,
        image_name=image_name, properties=dict(properties or {}),
        source_date_epoch=_epoch(source_date_epoch),
        architecture=architecture or disk_architecture(source, source_format),
    )
    log.debug("convert %s (%s) -> %s as %s", source, req.source_format, dest, plugin.name)
    return plugin.convert(req)


def _epoch(value: int | None) -> int:
    if value is not None:
        return value
    env = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(env) if env.isdigit() else DEFAULT_SOURCE_DATE_EPOCH
