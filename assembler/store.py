"""Content-addressed store: one directory per cache key, written beside and renamed into place."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler.fsutil import atomic_path, replace_dir, write_json
from assembler.log import log

META = "meta.json"
FILES = "files"  # in meta.json: {path: [size, mtime_ns]} of every file of the entry
LOCK_SUFFIX = ".lock"
USE_SUFFIX = ".use"  # <cache>/locks/KEY.use: shared-locked by every build using the entry


def recorded_digests(meta: dict[str, Any]) -> dict[str, str]:
    """{file of the entry: sha256} for every {path|file, sha256} its phase recorded in meta.json."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("path") or node.get("file")
            if isinstance(name, str) and isinstance(node.get("sha256"), str) and "/" not in name:
                found[name] = node["sha256"]
            for key, value in node.items():
                if key != FILES:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(meta)
    return found


def damaged(path: Path, files: Any) -> str:
    """Why an entry's files differ from what was committed ('' when they do not, or nothing was recorded)."""
    if not isinstance(files, dict):
        return ""  # written before entries recorded their files
    for rel, recorded in files.items():
        try:
            stat = (path / rel).stat()
        except OSError:
            return f"{rel} is missing"
        if [stat.st_size, stat.st_mtime_ns] != recorded:
            return f"{rel} changed"
    return ""


def _discard(path: Path) -> None:
    trash = path.with_name(f".{path.name}.damaged-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


@dataclass(frozen=True)
class Entry:
    """A finished store object: its key, its directory and the metadata its phase recorded."""

    key: str
    path: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._held: dict[str, int] = {}  # key -> fd with a shared lock: entries this process uses

    def _lock_file(self, key: str, suffix: str) -> Path:
        """<cache>/locks/KEY.lock (writing the entry) or KEY.use (using it)."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return locks / f"{key}{suffix}"

    def _hold(self, key: str) -> bool:
        """Mark the entry in use until this process ends (`gc` skips it); False when the cache is read-only."""
        if key in self._held:
            return True
        try:
            fd = os.open(self._lock_file(key, USE_SUFFIX), os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            return True  # nobody can gc a cache we cannot write either
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while gc removes it; then get() finds it gone
        self._held[key] = fd
        return True

    @contextmanager
    def exclusive(self, key: str) -> Iterator[bool]:
        """For removing an entry: True when no build uses or writes it (held until the block ends)."""
        fds = []
        try:
            for path in (self._lock_file(key, USE_SUFFIX), self._lock_file(key, LOCK_SUFFIX)):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                fds.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
            yield True
        finally:
            for fd in fds:
                os.close(fd)

    def object_dir(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def get(self, key: str) -> Entry | None:
        """The finished entry for key; one whose files changed since it was committed (a different size or
        mtime, a missing file) is removed and reported absent, so it is built again instead of used."""
        path = self.object_dir(key)
        meta = path / META
        if not meta.is_file() or not self._hold(key) or not meta.is_file():  # again: gc may have just won
            return None
        data = json.loads(meta.read_text())
        with suppress(OSError):  # a read-only cache still serves; `cache ls` then shows the commit time
            os.utime(meta)  # last use, what `assembler cache gc` removes the oldest by
        why = damaged(path, data.get(FILES))
        if why:
            log.warning("cache entry %s is damaged (%s); building it again", key[:12], why)
            _discard(path)
            return None
        return Entry(key, path, data)

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Two builds never write the same entry: the second waits and then finds it done."""
        with self._lock_file(key, LOCK_SUFFIX).open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def scratch(self, label: str) -> Iterator[Path]:
        """A private temporary directory under <cache>/tmp, removed afterwards; while it exists a lock file
        beside it is held, so `clean_stale()` (at the start of every build) removes only orphans."""
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        fd, lock_name = tempfile.mkstemp(prefix=f"{label}.", suffix=LOCK_SUFFIX, dir=tmp_root)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held before the directory exists: never taken for an orphan
        tmp = Path(lock_name.removesuffix(LOCK_SUFFIX))
        try:
            tmp.mkdir()
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.unlink(lock_name)
            os.close(fd)

    @contextmanager
    def writer(self, key: str) -> Iterator[Path]:
        """Yield an empty temporary directory; on success it becomes the entry for `key`.

        The caller writes artefacts into it and the store adds meta.json last (via commit()).
        On any exception the temporary directory is removed, so no half entry exists. An entry being
        replaced (--no-cache) is first renamed aside, so a crash never leaves a mix that looks complete.
        """
        with self.scratch(key[:12]) as tmp:
            yield tmp
            if not (tmp / META).is_file():
                raise RuntimeError("store writer finished without meta.json")  # programming error
            replace_dir(tmp, self.object_dir(key))

    def clean_stale(self) -> list[Path]:
        """Remove what killed runs left in <cache>/tmp (directories whose lock nobody holds any more)."""
        removed: list[Path] = []
        tmp_root = self.root / "tmp"
        for path in sorted(tmp_root.iterdir()) if tmp_root.is_dir() else []:
            if path.name.endswith(LOCK_SUFFIX) or not path.is_dir():
                continue
            lock = path.with_name(path.name + LOCK_SUFFIX)
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a running build's
            shutil.rmtree(path, ignore_errors=True)
            os.unlink(lock)
            os.close(fd)
            removed.append(path)
        # Entries renamed aside by a replace or a discard that was killed before it removed them.
        for trash in sorted((self.root / "objects").glob("*/.*.old-*")) + sorted(
                (self.root / "objects").glob("*/.*.damaged-*")):
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(trash)
        for lock in tmp_root.glob(f"*{LOCK_SUFFIX}") if tmp_root.is_dir() else []:
            if not lock.with_name(lock.name.removesuffix(LOCK_SUFFIX)).exists():
                with open(lock, "a") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    lock.unlink(missing_ok=True)
        return removed

    @staticmethod
    def commit_meta(tmp: Path, meta: dict[str, Any]) -> None:
        """meta.json last, with the size and mtime of every file: what get() checks before reuse."""
        files = {p.relative_to(tmp).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
                 for p in sorted(tmp.rglob("*")) if p.is_file() and not p.is_symlink()}
        write_json(tmp / META, {**meta, "created": int(time.time()), FILES: files})

    # Refs remember the last key of (image, phase) so a plan can say "inputs changed".
    def ref(self, image: str, phase: str) -> str | None:
        path = self.root / "refs" / image / phase
        return path.read_text().strip() if path.is_file() else None

    def set_ref(self, image: str, phase: str, key: str) -> None:
        with atomic_path(self.root / "refs" / image / phase) as tmp:  # a unique temporary name: builds race
            tmp.write_text(key + "\n")
