"""Content-addressed store: one directory per cache key, written beside and renamed into place."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler.fsutil import write_json

META = "meta.json"


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

    def object_dir(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def get(self, key: str) -> Entry | None:
        path = self.object_dir(key)
        meta = path / META
        if not meta.is_file():
            return None
        return Entry(key, path, json.loads(meta.read_text()))

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Two builds never write the same entry: the second waits and then finds it done."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{key}.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def writer(self, key: str) -> Iterator[Path]:
        """Yield an empty temporary directory; on success it becomes the entry for `key`.

        The caller writes artefacts into it and the store adds meta.json last (via commit()).
        On any exception the temporary directory is removed, so no half entry exists.
        """
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key[:12]}.", dir=tmp_root))
        try:
            yield tmp
            if not (tmp / META).is_file():
                raise RuntimeError("store writer finished without meta.json")  # programming error
            final = self.object_dir(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def commit_meta(tmp: Path, meta: dict[str, Any]) -> None:
        write_json(tmp / META, {**meta, "created": int(time.time())})

    # Refs remember the last key of (image, phase) so a plan can say "inputs changed".
    def ref(self, image: str, phase: str) -> str | None:
        path = self.root / "refs" / image / phase
        return path.read_text().strip() if path.is_file() else None

    def set_ref(self, image: str, phase: str, key: str) -> None:
        path = self.root / "refs" / image / phase
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key + "\n")
        os.replace(tmp, path)
