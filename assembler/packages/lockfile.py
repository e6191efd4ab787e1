"""The lock: every index file and .deb that reached an image's rootfs, by URL, size and sha256.

The lock names the mirror state it was resolved against (the signed InRelease files, by digest), so replaying
it serves exactly the indexes apt saw then, and every .deb apt fetched, in the base bootstrap ("base") and in
the Containerfile's RUN steps ("image"). URLs are the upstream locations the image's sources.list names; the
mirror map decides where they are fetched from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assembler.errors import ConfigError
from assembler.fsutil import atomic_path, sha256_bytes

LOCK_FILE = "image.lock.json"  # the native (amd64) lock in an image directory, and the lock in a store entry


def lock_name(arch: str) -> str:
    """The committed lock of `arch` in an image directory: image.lock.json (amd64), image.lock.arm64.json."""
    return LOCK_FILE if arch == "amd64" else f"image.lock.{arch}.json"
LOCK_VERSION = 1
SHA256 = r"^[0-9a-f]{64}$"

# "parent": installed by the image this one starts FROM (assembler/NAME), whose own lock replays them.
Layer = Literal["base", "parent", "image"]


class IndexFile(BaseModel):
    """A file under dists/: an InRelease (signed) or an index it lists (fetched by hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://")
    sha256: str = Field(pattern=SHA256)
    size: int = Field(ge=0)
    date: str | None = None  # an InRelease's Date: where a snapshot mirror finds this state


class LockedPackage(BaseModel):
    """One .deb as apt fetched it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.+-]*$")
    version: str = Field(min_length=1)
    architecture: str = Field(pattern=r"^[a-z0-9-]+$")
    url: str = Field(pattern=r"^https?://")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256)
    layer: Layer

    @property
    def ident(self) -> str:
        return f"{self.name}:{self.architecture}"


_Item = TypeVar("_Item", IndexFile, LockedPackage)


class Lock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    image: str
    indexes: tuple[IndexFile, ...] = ()
    packages: tuple[LockedPackage, ...] = ()

    def inreleases(self) -> list[IndexFile]:
        return [i for i in self.indexes if i.url.endswith("/InRelease")]

    def package(self, url: str) -> LockedPackage | None:
        return _by_url(self.packages).get(url)

    def index(self, url: str) -> IndexFile | None:
        return _by_url(self.indexes).get(url)

    def digest(self) -> str:
        return sha256_bytes(dumps(self).encode())


def _by_url(items: tuple[_Item, ...]) -> dict[str, _Item]:
    return {i.url: i for i in items}


def make_lock(image: str, indexes: list[IndexFile], packages: list[LockedPackage]) -> Lock:
    """A lock in canonical order (indexes by URL, packages by layer, name, architecture)."""
    unique_idx = {i.url: i for i in indexes}
    unique_pkg = {p.url: p for p in packages}
    return Lock(image=image, indexes=tuple(sorted(unique_idx.values(), key=lambda i: i.url)),
                packages=tuple(sorted(unique_pkg.values(),
                                      key=lambda p: (p.layer != "base", p.name, p.architecture, p.url))))


def dumps(lock: Lock) -> str:
    """Stable JSON, one index file or package per line, so a lock diffs line by line in review."""
    head = {"version": lock.version, "image": lock.image}
    lines = ["{", *(f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items())]
    for key, items in (("indexes", lock.indexes), ("packages", lock.packages)):
        rows = [json.dumps(i.model_dump(mode="json", exclude_none=True), sort_keys=True) for i in items]
        lines.append(f'  "{key}": [')
        lines += [f"    {row}{',' if n < len(rows) - 1 else ''}" for n, row in enumerate(rows)]
        lines.append("  ]," if key == "indexes" else "  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_lock(path: Path, lock: Lock) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(lock))


def read_lock(path: Path) -> Lock:
    """Parse and validate a lock file (untrusted: it may come from a BOM or a bundle)."""
    try:
        return Lock.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigError(f"invalid lock file {path}", details=str(exc)[:2000],
                          resolution="regenerate it with `assembler lock IMAGE --update`, or delete it") from exc


@dataclass(frozen=True)
class Change:
    """One package's difference between two locks; old or new is None for an addition or a removal."""

    ident: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        return f"{self.ident}: {self.old or '(none)'} -> {self.new or '(none)'}"


def changes(old: Lock | None, new: Lock) -> list[Change]:
    """What moved from `old` to `new`, per package name and architecture (layer moves are not changes)."""
    before = {p.ident: p.version for p in (old.packages if old else ())}
    after = {p.ident: p.version for p in new.packages}
    return [Change(ident, before.get(ident), after.get(ident))
            for ident in sorted(before.keys() | after.keys()) if before.get(ident) != after.get(ident)]
