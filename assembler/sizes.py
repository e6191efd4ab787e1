"""One grammar for a size, wherever a user writes one: image.yaml's disk size and headroom, `--size`, a
layout's partition sizes, `cache gc --keep-bytes`."""

from __future__ import annotations

import re

from assembler.errors import ConfigError

MAX_SIZE = 1 << 50  # 1 PiB: anything larger is a typo, and qemu-img refuses it anyway
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?$")


class SizeError(ConfigError, ValueError):
    """A ConfigError for the CLI, and a ValueError so that pydantic reports it against the field."""


def parse_size(value: int | str) -> int:
    """Bytes from an int or text: '4G', '512M', '1.5G', '64 MiB', '2GiB', '3k', '1048576' (binary units,
    any case); positive, finite and at most 1 PiB."""
    if isinstance(value, bool):  # a YAML `yes` is not a size
        raise SizeError(f"invalid size: {value!r}", resolution="use a number of bytes or e.g. 64MiB, 4G")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(value.strip().upper())
        size = int(float(match.group(1)) * _UNITS[match.group(2)]) if match else 0
    if not 0 < size <= MAX_SIZE:
        raise SizeError(f"invalid size: {value!r}",
                        resolution="use a positive number of bytes, or one with K, M, G or T (KiB ... TiB, "
                                   "binary units), up to 1024T: e.g. 64MiB, 4G")
    return size
