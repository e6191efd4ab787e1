"""A copy of debian-13 whose lock names one .deb and one InRelease, both already in the package store of
the cache beside it: lock and bundle then need no network."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from assembler.packages.lockfile import LOCK_FILE, IndexFile, Lock, LockedPackage, make_lock, write_lock
from assembler.packages.store import PackageStore
from tests.helpers import REPO

DEB = b"!<arch>\ndebian-binary   a stand-in .deb\n"
INRELEASE = b"-----BEGIN PGP SIGNED MESSAGE-----\nDate: Sat, 09 Aug 2025 10:00:00 UTC\n"


@dataclass(frozen=True)
class LockedImage:
    dir: Path
    cache: Path
    lock: Lock


def locked_image(root: Path, name: str = "debian-13") -> LockedImage:
    image, cache = root / name, root / "cache"
    shutil.copytree(REPO / "Containerfiles" / "debian-13", image)
    store = PackageStore(cache)
    deb_sha, release_sha = hashlib.sha256(DEB).hexdigest(), hashlib.sha256(INRELEASE).hexdigest()
    store.put(deb_sha, [DEB], what="hello", where="test")
    store.put(release_sha, [INRELEASE], what="InRelease", where="test")
    lock = make_lock(name, [IndexFile(url="http://deb.debian.org/debian/dists/trixie/InRelease",
                                      sha256=release_sha, size=len(INRELEASE),
                                      date="Sat, 09 Aug 2025 10:00:00 UTC")],
                     [LockedPackage(name="hello", version="2.10-5", architecture="amd64", layer="image",
                                    url="http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-5_amd64.deb",
                                    size=len(DEB), sha256=deb_sha)])
    write_lock(image / LOCK_FILE, lock)
    return LockedImage(image, cache, lock)
