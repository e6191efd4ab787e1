"""Which mirror state a build gets: the lock replayed when all its files are somewhere, else today's.

`check()` looks for every locked file (store, then each source, HEAD only: it writes nothing) so
`--locked` fails in seconds naming what is gone; `session_for()` turns the answer into a proxy session.

A committed lock goes stale when the archive signs a newer state. The first build re-resolves against
today's archive; its effective lock is kept in the cache (relocked/IMAGE/<committed digest>.json), and later
builds of the same committed lock replay it while the store still serves every file of it: the same bits
every time and the engine's layer cache, instead of a new mirror state (and no layer cache) per build.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from assembler.errors import AssemblerError, ConfigError
from assembler.fsutil import sha256_bytes
from assembler.log import log
from assembler.mirrors import MirrorMap, load_mirror_map
from assembler.packages import index
from assembler.packages.lockfile import Change, IndexFile, Lock, LockedPackage, lock_name, read_lock, write_lock
from assembler.packages.proxy import Session
from assembler.packages.sources import Sources
from assembler.packages.store import PackageStore

PROBE_WORKERS = 16


class StaleLockError(AssemblerError):
    """--locked, and the lock names files no source has any more."""


@dataclass(frozen=True)
class LockCheck:
    missing: list[str]  # "name version (arch)" or an index URL, for the message

    @property
    def complete(self) -> bool:
        return not self.missing


def sources_for(lock: Lock | None, mirrors: MirrorMap | None = None, *, offline: bool = False,
                snapshots: dict[str, str] | None = None) -> Sources:
    """The sources, with each archive's locked InRelease date for snapshot lookups; `snapshots` (an image's
    own) apply where the mirror map names none."""
    mirrors = mirrors or load_mirror_map()
    if snapshots:
        mirrors = mirrors.model_copy(update={"snapshots": {**snapshots, **mirrors.snapshots}})
    dates: dict[str, str] = {}
    for item in lock.inreleases() if lock else []:
        archive = index.archive_of(item.url)
        if archive and item.date:
            dates.setdefault(archive, item.date)
    return Sources(mirrors, snapshot_dates=dates, offline=offline)


def check(lock: Lock, store: PackageStore, sources: Sources) -> LockCheck:
    """Every locked file that is neither in the store nor in any source (HEAD probes, in parallel).

    An InRelease counts as available from a mirror only by its bytes: the URL never changes, the
    content does.
    """
    def probe_index(item: IndexFile) -> str | None:
        if store.has(item.sha256):
            return None
        if item.url.endswith("/InRelease"):
            if sources.in_registry(item.sha256):
                return None
            try:
                if sha256_bytes(sources.read(item.url)) == item.sha256:
                    return None
            except AssemblerError:
                pass
            return f"{item.url} (the archive has signed a newer state)"
        return None if sources.available(item.url, item.sha256) else item.url

    def probe_package(pkg: LockedPackage) -> str | None:
        if store.has(pkg.sha256) or sources.available(pkg.url, pkg.sha256):
            return None
        return f"{pkg.name} {pkg.version} ({pkg.architecture})"

    with ThreadPoolExecutor(PROBE_WORKERS) as pool:
        missing = [m for m in pool.map(probe_package, lock.packages) if m]
        if not missing:  # indexes matter only when every .deb is still there
            missing = [m for m in pool.map(probe_index, lock.indexes) if m]
    return LockCheck(missing)


def read_image_lock(context: Path, arch: str = "amd64") -> Lock | None:
    path = context / lock_name(arch)
    return read_lock(path) if path.is_file() else None


def require_complete(lock: Lock | None, context: Path, store: PackageStore, *, offline: bool = False,
                     snapshots: dict[str, str] | None = None, arch: str = "amd64") -> None:
    """--locked: fail now (no build, nothing written) unless every locked file can be served."""
    if lock is None:
        raise StaleLockError(f"{context.name} has no {lock_name(arch)}",
                             resolution=f"run `assembler lock {context}{_arch_option(arch)}` and commit the file")
    result = check(lock, store, sources_for(lock, offline=offline, snapshots=snapshots))
    if not result.complete:
        shown = "\n".join(f"  {m}" for m in result.missing[:50])
        more = f"\n  ... and {len(result.missing) - 50} more" if len(result.missing) > 50 else ""
        raise StaleLockError(
            f"the lock of {context.name} is stale: {len(result.missing)} locked file(s) are in no source "
            "(package store, mirror, snapshot)", details=shown + more,
            resolution=f"run `assembler lock {context}{_arch_option(arch)} --update` and commit the new "
                       f"{lock_name(arch)}, "
                       "or build from a bundle (`--bundle FILE`) or a snapshot mirror")


def _arch_option(arch: str) -> str:
    return "" if arch == "amd64" else f" --arch {arch}"


def session_for(image: str, context: Path, cache_dir: Path, keyrings: list[Path], *, strict: bool = False,
                update: bool = False, lock: Lock | None = None, offline: bool = False,
                snapshots: dict[str, str] | None = None, arch: str = "amd64") -> tuple[Session, list[str]]:
    """The session a build fetches through, and the locked files it could not find (empty: replay).

    `lock` replaces the image directory's (a bundle's); `update` re-resolves against today's archive
    whatever the lock says (`assembler lock --update`); `offline` allows the store only.
    """
    store = PackageStore(cache_dir)
    lock = None if update else lock or read_image_lock(context, arch)
    if strict or offline:
        require_complete(lock, context, store, offline=offline, snapshots=snapshots, arch=arch)
    missing: list[str] = []
    if lock is not None and not strict and not offline:
        missing = check(lock, store, sources_for(lock, snapshots=snapshots)).missing
        if missing:
            relocked = _servable_relock(image, cache_dir, lock, store, snapshots)
            log.warning("the lock of %s names %d file(s) no source has any more (first: %s); %s", image,
                        len(missing), missing[0],
                        "replaying the re-resolution an earlier build made of it (kept in the cache; "
                        f"`assembler lock {context} --update` commits a fresh one)" if relocked
                        else "re-resolving against today's archive")
            lock = relocked
    sources = sources_for(lock, offline=offline, snapshots=snapshots)
    return Session(image, store, sources, keyrings, lock=lock, strict=strict or offline), missing


def relock_path(cache_dir: Path, image: str, committed: Lock) -> Path:
    return cache_dir / "relocked" / image / f"{committed.digest()}.json"


def remember_relock(cache_dir: Path, image: str, committed: Lock, effective: Lock) -> None:
    """Keep what a build of a stale committed lock resolved, for the next build of that same lock."""
    path = relock_path(cache_dir, image, committed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lock(path, effective)


def _servable_relock(image: str, cache_dir: Path, committed: Lock, store: PackageStore,
                     snapshots: dict[str, str] | None) -> Lock | None:
    path = relock_path(cache_dir, image, committed)
    if not path.is_file():
        return None
    try:
        relocked = read_lock(path)  # ours, but read back as untrusted: a damaged file means re-resolving
    except ConfigError as exc:
        log.debug("ignoring %s: %s", path, exc.brief)
        return None
    return relocked if check(relocked, store, sources_for(relocked, snapshots=snapshots)).complete else None


def live_session(image: str, cache_dir: Path, keyrings: list[Path]) -> Session:
    """Today's signed state, no lock (a base outside any image build, or a lock being written)."""
    return Session(image, PackageStore(cache_dir), sources_for(None), keyrings)


def report(image: str, changes: list[Change]) -> None:
    if changes:
        log.warning("%s: the packages differ from the committed lock (%d change(s)):\n%s", image,
                    len(changes), "\n".join(f"  {c}" for c in changes))
