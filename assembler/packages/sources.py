"""Where a locked file comes from when the store lacks it: the mirror map's mirror, then a snapshot mirror.

Every byte fetched is checked against the sha256 the lock or a signed index names before it is kept; a
source that answers with other bytes is an error, never a fallback.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http
import http.client
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from assembler.errors import AssemblerError, PublishError
from assembler.fsutil import CHUNK
from assembler.log import log
from assembler.mirrors import MirrorMap
from assembler.packages.store import IntegrityError, PackageStore
from assembler.registry import Registry, repository

USER_AGENT = "assembler (package store)"
TIMEOUT = 60.0
PROBE_TIMEOUT = 10.0


class Unavailable(AssemblerError):
    """No source has the file (404 everywhere, or nothing answers)."""


def snapshot_stamp(date: str | None) -> str | None:
    """An InRelease Date (RFC 2822) as snapshot.debian.org's timestamp, 20251117T000000Z."""
    if not date:
        return None
    try:
        when = email.utils.parsedate_to_datetime(date).astimezone(dt.UTC)
    except (TypeError, ValueError):
        return None
    return when.strftime("%Y%m%dT%H%M%SZ")


class Sources:
    """The mirror map's rewrite of an upstream URL, then its snapshot (when the map names one)."""

    def __init__(self, mirrors: MirrorMap, *, snapshot_dates: dict[str, str] | None = None,
                 offline: bool = False) -> None:
        self.mirrors = mirrors
        self.snapshot_dates = snapshot_dates or {}  # archive URL -> the lock's InRelease Date there
        self.offline = offline  # --offline: the store (and an imported bundle) only, no network at all
        self.registry: tuple[Registry, str] | None = None  # the shared package store, blobs by sha256
        if mirrors.package_registry and not offline:
            self.registry = repository(mirrors.package_registry)

    def candidates(self, url: str) -> list[str]:
        if self.offline:
            return []
        found = [self.mirrors.url(url)]
        for prefix, template in self.mirrors.snapshots.items():
            if url.startswith(prefix.rstrip("/") + "/"):
                stamp = snapshot_stamp(self.snapshot_dates.get(prefix.rstrip("/")))
                if stamp:
                    found.append(template.format(timestamp=stamp).rstrip("/") + url[len(prefix.rstrip("/")):])
        return found

    def read(self, url: str) -> bytes:
        """A small unpinned file (a live InRelease) from the first source that has it."""
        errors = []
        for candidate in self.candidates(url)[:1]:  # a live state is the mirror's, never a snapshot's
            try:
                with _open(candidate) as response:
                    data: bytes = response.read()
                    return data
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                errors.append(f"{candidate}: {getattr(exc, 'reason', None) or exc}")
        if self.offline:
            raise Unavailable(f"{url} is needed and the build is --offline",
                              resolution="build from a bundle that holds the image's lock (`--bundle FILE`)")
        raise Unavailable(f"cannot fetch {url}", details="\n".join(errors),
                          resolution="check the network or the mirror map (ASSEMBLER_MIRRORS)")

    def fetch(self, url: str, sha256: str, store: PackageStore, *, what: str) -> Path:
        """The verified file: fetched from the first source that has it into the store."""
        errors = []
        refused: IntegrityError | None = None
        for candidate in self.candidates(url):
            try:
                with _open(candidate) as response:
                    log.debug("fetching %s from %s", what, candidate)
                    return store.put(sha256, _chunks(response), what=what, where=candidate)
            except IntegrityError as exc:
                # Never kept; the next source may still have the pinned bytes (an InRelease URL serves
                # whatever state the archive signed last).
                refused = refused or exc
                errors.append(f"{candidate}: {exc.brief}")
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                errors.append(f"{candidate}: {getattr(exc, 'reason', None) or exc}")
        if self.registry is not None:
            registry, repo = self.registry
            digest = f"sha256:{sha256}"
            try:
                if registry.has_blob(repo, digest):
                    where = f"{registry.host}/{repo}@{digest}"
                    return store.put(sha256, registry.pull_blob(repo, digest), what=what, where=where)
                errors.append(f"{registry.host}/{repo}: no blob {digest}")
            except PublishError as exc:
                errors.append(f"{registry.host}/{repo}: {exc.brief}")
        if refused is not None:
            raise IntegrityError(refused.brief, details="\n".join([refused.details, *errors]),
                                 resolution=refused.resolution)
        if self.offline:
            raise Unavailable(f"{what} is not in the store and the build is --offline",
                              resolution="build from a bundle that holds the image's lock (`--bundle FILE`)")
        raise Unavailable(f"{what} is in no source", details="\n".join(errors),
                          resolution="run `assembler lock IMAGE --update`, or add a snapshot mirror or a bundle")

    def available(self, url: str, sha256: str | None = None) -> bool:
        """A HEAD on each source; True when one has the file (its bytes are verified when fetched)."""
        for candidate in self.candidates(url):
            try:
                with _open(candidate, "HEAD", PROBE_TIMEOUT):
                    return True
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
                continue
        return sha256 is not None and self.in_registry(sha256)

    def in_registry(self, sha256: str) -> bool:
        if self.registry is None:
            return False
        registry, repo = self.registry
        try:
            return registry.has_blob(repo, f"sha256:{sha256}")
        except PublishError:
            return False


def _request(url: str, method: str = "GET", headers: Mapping[str, str] | None = None) -> urllib.request.Request:
    return urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT, **(headers or {})})


_kept = threading.local()  # (scheme, host) -> the connection this thread keeps open to it


@contextmanager
def _open(url: str, method: str = "GET", timeout: float = TIMEOUT,
          headers: Mapping[str, str] | None = None) -> Iterator[Any]:
    """The response to one request, on a connection kept open per host and thread.

    A new TCP connection per file stalled for 1-5 s now and then here: 200 HEAD probes of a lock took 10-36 s
    with one connection each, 0.3 s on kept-alive ones. A redirect, a proxy from the environment or anything
    but http(s) goes through urllib as before; an error status raises urllib's HTTPError, as urlopen does, and
    so does 304 Not Modified (the answer to conditional `headers`, If-None-Match/If-Modified-Since).
    """
    parts = urllib.parse.urlsplit(url)
    proxied = parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")
    if parts.scheme not in ("http", "https") or proxied:
        with urllib.request.urlopen(_request(url, method, headers), timeout=timeout) as plain:
            yield plain
        return
    pool: dict[tuple[str, str], http.client.HTTPConnection] = _kept.__dict__.setdefault("connections", {})
    key = (parts.scheme, parts.netloc)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    while True:
        kept = pool.get(key)
        conn = pool[key] = kept or kind(parts.netloc, timeout=timeout)
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, target, headers={"User-Agent": USER_AGENT, **(headers or {})})
            response = conn.getresponse()
            break
        except (http.client.HTTPException, OSError):
            conn.close()
            del pool[key]
            if kept is None:
                raise  # a new connection failed: the host does not answer (no second wait for it)
            # the server closed the kept connection since its last answer: once more on a new one
    try:
        if 300 <= response.status < 400 and response.status != http.HTTPStatus.NOT_MODIFIED:
            response.read()
            with urllib.request.urlopen(_request(url, method, headers), timeout=timeout) as followed:
                yield followed
        elif response.status >= 400 or response.status == http.HTTPStatus.NOT_MODIFIED:
            response.read()
            raise urllib.error.HTTPError(url, response.status, response.reason, response.msg, None)
        else:
            yield response
    finally:
        if method == "HEAD":
            response.read()  # no body: this marks the answer done and the connection reusable
        if not response.isclosed() or response.will_close:  # unread or closing: not reusable
            conn.close()
            pool.pop(key, None)


open_url = _open  # the project's one HTTP client, for fetches beyond the package store (the OSV feed)


def _chunks(response: Any) -> Iterator[bytes]:
    while chunk := response.read(CHUNK):
        yield chunk
