"""The locking proxy: apt's only way to the archives during a build, on loopback, for one build.

apt (in mmdebstrap and in the engine's RUN steps, through `http_proxy`) asks for upstream URLs; the session
answers from the package store, fetching what is missing from the sources, and checks every file against
the digest the chain of trust names: an InRelease against the lock (replay) or the archive keyring (live),
every other index against its InRelease, every .deb against the lock or the served Packages index. What it
served is the effective lock. Nothing about the proxy ends up in the image: it is only in apt's environment.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from assembler.errors import AssemblerError
from assembler.fsutil import sha256_bytes
from assembler.log import log
from assembler.packages import index
from assembler.packages.lockfile import IndexFile, Layer, Lock, LockedPackage, make_lock
from assembler.packages.sources import Sources, Unavailable
from assembler.packages.store import IntegrityError, PackageStore

PREFETCH_WORKERS = 4  # parallel downloads of locked files the store lacks; apt asks for one at a time


@dataclass
class Refusal:
    url: str
    reason: str


@dataclass
class Session:
    """One build's view of the archives: replaying `lock` when given, else today's signed state."""

    image: str
    store: PackageStore
    sources: Sources
    keyrings: list[Path]
    lock: Lock | None = None  # replay: serve exactly this mirror state
    strict: bool = False  # --locked: a .deb outside the lock is refused
    layer: Layer = "base"
    served_indexes: dict[str, IndexFile] = field(default_factory=dict)
    served_packages: dict[str, LockedPackage] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)
    _pinned: dict[str, IndexFile] = field(default_factory=dict)  # suite dir -> InRelease
    _releases: dict[str, index.Release] = field(default_factory=dict)  # suite dir -> its listing
    _records: dict[str, dict[str, index.PackageRecord]] = field(default_factory=dict)  # archive -> by path
    _parsed: set[str] = field(default_factory=set)
    _verified: set[str] = field(default_factory=set)  # store files hashed by this session
    _mutex: threading.RLock = field(default_factory=threading.RLock)
    _server: ThreadingHTTPServer | None = None
    _prefetching: dict[str, Future[Path]] = field(default_factory=dict)  # sha256 -> download in flight
    _pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------------------ the mirror state

    def pin_inrelease(self, url: str) -> IndexFile:
        """The session's InRelease for a suite: the lock's when replaying, else today's, verified once."""
        suite = index.suite_dir(url)
        with self._mutex:
            if suite in self._pinned:
                return self._pinned[suite]
            if self.lock is not None:
                pinned = self.lock.index(url)
                if pinned is None:
                    raise Unavailable(f"{url} is not in the lock",
                                      resolution="run `assembler lock IMAGE --update` (an apt source was added)")
                path = self._obtain(url, pinned.sha256, what=f"InRelease {url}")
            else:
                data = self.sources.read(url)
                sha = sha256_bytes(data)
                path = self.store.put(sha, [data], what=f"InRelease {url}", where=url)
                index.verify_inrelease(path, self.keyrings, url)
                _check_fresh(index.parse_release(data), url)
                pinned = IndexFile(url=url, sha256=sha, size=len(data),
                                   date=index.parse_release(data).date)
            self._releases[suite] = index.parse_release(path.read_bytes())
            self._pinned[suite] = pinned
            self.served_indexes[url] = pinned
            return pinned

    def state(self, urls: list[str]) -> list[IndexFile]:
        """The pinned InRelease of each URL: what a base bootstrapped in this session is keyed by."""
        return [self.pin_inrelease(u) for u in urls]

    # ------------------------------------------------------------------------------ one request

    def resolve(self, url: str) -> Path:
        """The verified file for a URL apt asked for; Unavailable (404) or AssemblerError (403/502)."""
        if index.archive_of(url) is None:
            raise Refused(f"{url} is not in an apt archive (dists/ or pool/); the build's apt proxy serves "
                          "nothing else: fetch other files with downloads.yaml")
        if "/dists/" in url:
            return self._index(url)
        return self._package(url)

    def _index(self, url: str) -> Path:
        if url.endswith("/InRelease"):
            pinned = self.pin_inrelease(url)
            return self._obtain(url, pinned.sha256, what=f"InRelease {url}")
        if url.endswith(("/Release", "/Release.gpg")):
            # apt falls back to these only when InRelease fails; the session serves signed InRelease only.
            raise Unavailable(f"{url}: only InRelease is served")
        suite = index.suite_dir(url)
        self.pin_inrelease(suite + "InRelease")
        release = self._releases[suite]
        wanted = index.by_hash(url)
        listed = (release.by_sha256(wanted) if wanted
                  else release.files.get(url[len(suite):]))
        if listed is None:
            raise Unavailable(f"{url} is not listed in the pinned InRelease of {suite}")
        entry = IndexFile(url=url, sha256=listed.sha256, size=listed.size)
        path = self._obtain(url, entry.sha256, what=f"index {url}")
        with self._mutex:
            self.served_indexes[url] = entry
        return path

    def _package(self, url: str) -> Path:
        locked = self.lock.package(url) if self.lock else None
        record = None if locked else self._record(url)
        if locked is None and record is None:
            raise Unavailable(f"{url} is in no index this build was served")
        if locked is None and self.strict:
            assert record is not None
            with self._mutex:
                self.refused.append(Refusal(url, f"{record.name} {record.version} is not in the lock"))
            raise Refused(f"{record.name} {record.version} is not in the lock (--locked)")
        if locked is not None:
            pkg = locked.model_copy(update={"layer": self.layer})
        else:
            assert record is not None
            pkg = LockedPackage(name=record.name, version=record.version, architecture=record.architecture,
                                url=url, size=record.size, sha256=record.sha256, layer=self.layer)
        path = self._obtain(url, pkg.sha256, what=f"{pkg.name} {pkg.version} ({pkg.architecture})")
        with self._mutex:
            self.served_packages.setdefault(url, pkg)
        return path

    def _record(self, url: str) -> index.PackageRecord | None:
        """The Packages stanza naming this pool file, from the indexes served so far (parsed once)."""
        archive = index.archive_of(url)
        assert archive is not None
        relative = url[len(archive) + 1:]
        with self._mutex:
            for served in list(self.served_indexes.values()):
                if served.url in self._parsed or index.archive_of(served.url) != archive:
                    continue
                suite = index.suite_dir(served.url)
                listed = self._releases[suite].by_sha256(served.sha256) if suite in self._releases else None
                if listed is None or not index.is_packages(listed.path):
                    continue
                self._parsed.add(served.url)
                data = index.decompress(self.store.path(served.sha256).read_bytes(), listed.path)
                records = self._records.setdefault(archive, {})
                for rec in index.parse_packages(data):
                    records.setdefault(rec.filename, rec)
            return self._records.get(archive, {}).get(relative)

    def _obtain(self, url: str, sha256: str, *, what: str) -> Path:
        if sha256 in self._verified and self.store.has(sha256):
            return self.store.path(sha256)  # hashed once per session (apt asks for some files twice)
        with self._mutex:
            pending = self._prefetching.get(sha256)
        if pending is not None:
            try:
                path = pending.result()  # hashed while it was written
                self._verified.add(sha256)
                return path
            except AssemblerError:
                pass  # fetched again below, so the request fails (or succeeds) with its own error
        path = self.store.verified(sha256) or self.sources.fetch(url, sha256, self.store, what=what)
        self._verified.add(sha256)
        return path

    def prefetch(self, layer: Layer) -> int:
        """Start downloading, in parallel and in the background, every .deb of `layer` in the replayed lock
        that the store lacks; apt's requests for them then wait for those downloads instead of fetching one
        file at a time. Returns how many were started."""
        if self.lock is None or self.sources.offline:
            return 0
        wanted = {p.sha256: p for p in self.lock.packages if p.layer == layer and not self.store.has(p.sha256)}
        with self._mutex:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PREFETCH_WORKERS, thread_name_prefix="apt-prefetch")
            # Largest first: the long downloads overlap everything else.
            for pkg in sorted(wanted.values(), key=lambda p: -p.size):
                if pkg.sha256 not in self._prefetching:
                    self._prefetching[pkg.sha256] = self._pool.submit(
                        self.sources.fetch, pkg.url, pkg.sha256, self.store,
                        what=f"{pkg.name} {pkg.version} ({pkg.architecture})")
        if wanted:
            log.info("prefetching %d locked package(s) of the %s layer", len(wanted), layer)
        return len(wanted)

    # ------------------------------------------------------------------------------ results

    def served_lock(self) -> Lock:
        """Only what this session served so far (a base bootstrap's part of the lock)."""
        return make_lock(self.image, list(self.served_indexes.values()), list(self.served_packages.values()))

    def effective_lock(self, base: list[LockedPackage] | None = None,
                       base_indexes: list[IndexFile] | None = None) -> Lock:
        """Everything served (plus a cached base's own record): the lock this build actually used.

        Replaying a lock, the image's part is the lock's own plus what was added: RUN steps the engine reused
        from a build of the same lock fetched nothing this time.
        """
        replayed = [p for p in self.lock.packages if p.layer == "image"] if self.lock else []
        packages = [*(base or []), *replayed, *self.served_packages.values()]
        indexes = [*(base_indexes or []), *(self.lock.indexes if self.lock else ()), *self.served_indexes.values()]
        return make_lock(self.image, indexes, packages)

    # ------------------------------------------------------------------------------ the server

    @property
    def proxy_url(self) -> str:
        assert self._server is not None, "the session is not serving"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @contextmanager
    def serving(self) -> Iterator[Session]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="apt-proxy", daemon=True)
        thread.start()
        self._server = server
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            self._server = None
            if self._pool is not None:  # what was not asked for is not waited for
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


def _check_fresh(release: index.Release, url: str) -> None:
    """Today's state must not be expired: apt in the build does not check (a replayed lock may be)."""
    if not release.valid_until:
        return
    try:
        until = email.utils.parsedate_to_datetime(release.valid_until)
    except (TypeError, ValueError) as exc:
        raise AssemblerError(f"{url} has an unreadable Valid-Until: {release.valid_until}") from exc
    if until < dt.datetime.now(dt.UTC):
        raise AssemblerError(f"{url} expired at {release.valid_until}: the mirror serves an old state",
                             resolution="use an up-to-date mirror (a frozen or replayed mirror is a risk)")


class Refused(AssemblerError):
    """A request the session will not serve (outside the archives, or outside the lock with --locked)."""


def _handler(session: Session) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: apt pipelines many requests on one connection
        disable_nagle_algorithm = True  # headers and a small body must not wait for the previous ACK

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_CONNECT(self) -> None:
            self._fail(403, "HTTPS cannot be locked: name the apt sources with http:// (apt verifies them)")

        def _answer(self, *, body: bool) -> None:
            url = urllib.parse.unquote(self.path)  # apt quotes + and ~ in pool paths (%2b, %7e)
            try:
                path = session.resolve(url)
            except Unavailable as exc:
                self._fail(404, exc.brief)
                return
            except (Refused, IntegrityError) as exc:
                log.warning("apt proxy refused %s: %s", url, exc.brief)
                self._fail(403, exc.brief)
                return
            except AssemblerError as exc:
                log.warning("apt proxy: %s: %s", url, exc)
                self._fail(502, exc.brief)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if body:
                # sendfile: the kernel copies, the GIL is free (the build's log thread competes for it).
                with path.open("rb") as handle:
                    self.connection.sendfile(handle)

        def _fail(self, status: int, reason: str) -> None:
            data = (reason + "\n").encode()
            self.send_response(status, reason.splitlines()[0][:200])
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("apt proxy: " + format, *args)

    return Handler
