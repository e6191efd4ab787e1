"""What the cache holds, whether it is intact, and bounding it: `assembler cache ls|verify|gc`.

The cache has phase entries (objects/, see store.py), the package store (packages/, .debs and indexes named by their
sha256), bootstrapped bases (base/), each image layer's file index and parsed tar headers by its diff_id (layers/,
what a rebuild does not read again; gc drops those no entry names) and what killed builds left (tmp/, removed by
every build's start and by gc). Sizes are allocated bytes (a raw disk is sparse); an entry linked into an out/
directory shares its bytes with it, so removing the entry frees them only once that output is gone too.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler.fsutil import sha256_file
from assembler.packages.store import PackageStore
from assembler.rootfs.layers import LayerCache
from assembler.store import META, Store, damaged, recorded_digests


@dataclass(frozen=True)
class EntryInfo:
    key: str
    phase: str
    image: str
    bytes: int
    created: int  # epoch seconds
    last_used: int

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "phase": self.phase, "image": self.image, "bytes": self.bytes,
                "created": self.created, "last_used": self.last_used}


@dataclass(frozen=True)
class Inventory:
    entries: list[EntryInfo]  # most recently used first
    package_files: int
    package_bytes: int
    base_bytes: int
    tmp_bytes: int
    layer_index_bytes: int = 0

    @property
    def total(self) -> int:
        return (sum(e.bytes for e in self.entries) + self.package_bytes + self.base_bytes + self.tmp_bytes
                + self.layer_index_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {"entries": [e.as_dict() for e in self.entries], "packages": {"files": self.package_files,
                "bytes": self.package_bytes}, "base_bytes": self.base_bytes, "tmp_bytes": self.tmp_bytes,
                "layer_index_bytes": self.layer_index_bytes, "total_bytes": self.total}


def allocated(path: Path) -> int:
    """Bytes on disk under path (a hard-linked file counted once per call)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for item in [path, *path.rglob("*")] if path.is_dir() else [path] if path.exists() else []:
        stat = item.lstat()
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        total += stat.st_blocks * 512
    return total


def _entries(store: Store) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for meta in sorted((store.root / "objects").glob(f"*/*/{META}")):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            data = {}
        found.append((meta.parent, data if isinstance(data, dict) else {}))
    return found


def inventory(store: Store) -> Inventory:
    infos = []
    for path, meta in _entries(store):
        created = meta.get("created")
        infos.append(EntryInfo(
            key=path.name, phase=str(meta.get("phase", "?")), image=str(meta.get("image", "-")),
            bytes=allocated(path), created=created if isinstance(created, int) else 0,
            last_used=int((path / META).stat().st_mtime)))
    infos.sort(key=lambda e: e.last_used, reverse=True)
    packages = store.root / "packages"
    files = [p for p in packages.rglob("*") if p.is_file()] if packages.is_dir() else []
    return Inventory(infos, len(files), allocated(packages), allocated(store.root / "base"),
                     allocated(store.root / "tmp"), allocated(LayerCache(store.root).root))


@dataclass(frozen=True)
class Problem:
    what: str  # "entry KEY (phase)" or "package SHA"
    why: str


def verify(store: Store) -> tuple[int, int, list[Problem]]:
    """(entries checked, files hashed, problems): every entry's files against their recorded size, mtime
    and digests, every package file against the sha256 it is named by. Reads, never repairs: a build
    discards a damaged entry itself, `gc` or deleting the directory removes one now."""
    problems: list[Problem] = []
    hashed = 0
    entries = _entries(store)
    for path, meta in entries:
        label = f"entry {path.name[:12]} ({meta.get('phase', '?')})"
        if why := damaged(path, meta.get("files")):
            problems.append(Problem(label, why))
            continue
        files = meta.get("files") if isinstance(meta.get("files"), dict) else None
        for rel, expected in recorded_digests(meta).items():
            if files is not None and rel not in files:
                continue  # a name recorded for something else (an output's name, a download)
            if not (path / rel).is_file():
                problems.append(Problem(label, f"{rel} is missing"))
                continue
            hashed += 1
            if sha256_file(path / rel) != expected:
                problems.append(Problem(label, f"{rel} does not have its recorded sha256 {expected[:12]}"))
    packages = PackageStore(store.root)
    for file in sorted(packages.root.rglob("*")) if packages.root.is_dir() else []:
        if file.is_file() and not file.name.startswith("."):
            hashed += 1
            if sha256_file(file) != file.name:
                problems.append(Problem(f"package {file.name[:12]}", "its content does not match its name"))
    return len(entries), hashed, problems


@dataclass(frozen=True)
class Removal:
    entry: EntryInfo
    reason: str


def gc(store: Store, *, keep_bytes: int | None = None, older_than: float | None = None,
       dry_run: bool = False) -> tuple[list[Removal], list[EntryInfo]]:
    """Remove the least recently used entries: those unused for `older_than` seconds, then more until the
    cache (packages, bases included) is at most `keep_bytes`. An entry a running build holds is skipped
    and returned second. Orphans of killed builds in tmp/ go first."""
    store.clean_stale()
    inv = inventory(store)
    now = time.time()
    total = inv.total
    removed: list[Removal] = []
    busy: list[EntryInfo] = []
    for entry in reversed(inv.entries):  # least recently used first
        stale = older_than is not None and now - entry.last_used > older_than
        over = keep_bytes is not None and total > keep_bytes
        if not stale and not over:
            continue
        reason = f"unused for {_age(now - entry.last_used)}" if stale else "over --keep-bytes"
        if dry_run:
            removed.append(Removal(entry, reason))
            total -= entry.bytes
            continue
        with store.exclusive(entry.key) as free:
            if not free:
                busy.append(entry)
                continue
            trash = store.object_dir(entry.key).with_name(f".{entry.key}.old-gc")
            store.object_dir(entry.key).rename(trash)  # gone for readers at once, then deleted
            shutil.rmtree(trash, ignore_errors=True)
        removed.append(Removal(entry, reason))
        total -= entry.bytes
    if not dry_run:
        LayerCache(store.root).prune(_named_layers(store))
    return removed, busy


def _named_layers(store: Store) -> set[str]:
    """The diff_ids the remaining rootfs entries record: the layer indexes a rebuild of them would reuse."""
    named: set[str] = set()
    for _, meta in _entries(store):
        oci = meta.get("oci")
        layers = oci.get("layers") if isinstance(oci, dict) else None
        for layer in layers if isinstance(layers, list) else []:
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                named.add(layer["digest"])
    return named


def _age(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} hours"


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '2w' -> seconds; None-free: raises ValueError on anything else."""
    value = text.strip().lower()
    if len(value) < 2 or value[-1] not in _DURATION or not value[:-1].isdigit():
        raise ValueError(text)
    return int(value[:-1]) * _DURATION[value[-1]]
