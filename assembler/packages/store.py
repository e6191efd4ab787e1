"""The package store: every .deb and index file kept once, by sha256, verified on the way in and out."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from assembler.errors import AssemblerError
from assembler.fsutil import CHUNK, sha256_file

STORE_DIR = "packages"


class IntegrityError(AssemblerError):
    """A file's bytes do not have the sha256 its lock or signed index names."""


def mismatch(what: str, where: str, expected: str, actual: str) -> IntegrityError:
    return IntegrityError(
        f"{what} from {where} does not match its pinned sha256: refused",
        details=f"expected sha256 {expected}\nactual   sha256 {actual}",
        resolution="the source serves other bytes than the lock names (a broken mirror, a proxy or tampering): "
                   "fix or drop that source in the mirror map, or run `assembler lock IMAGE --update` "
                   "if the archive really changed")


class PackageStore:
    """root/packages/sha256/<2 hex>/<hex>; a file is complete and verified or absent."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir / STORE_DIR / "sha256"

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def verified(self, sha256: str) -> Path | None:
        """The stored file if its bytes still hash to its name; a corrupted one is deleted and reported."""
        path = self.path(sha256)
        if not path.is_file():
            return None
        actual = sha256_file(path)
        if actual != sha256:
            path.unlink(missing_ok=True)
            raise mismatch(f"stored file {path.name[:16]}", str(path), sha256, actual)
        return path

    def put(self, sha256: str, chunks: Iterable[bytes], *, what: str, where: str) -> Path:
        """Write chunks, hashing as they arrive; keep the file only if the digest is `sha256`."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".", suffix=".part", dir=final.parent)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                raise mismatch(what, where, sha256, digest.hexdigest())
            os.chmod(name, 0o644)
            os.replace(name, final)
        finally:
            if os.path.exists(name):
                os.unlink(name)
        return final

    def put_file(self, source: Path, sha256: str, *, what: str) -> Path:
        with source.open("rb") as handle:
            return self.put(sha256, iter(lambda: handle.read(CHUNK), b""), what=what, where=str(source))
