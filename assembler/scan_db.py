"""The advisory database a scan reads: a local OSV file, directory or zip, or a URL cached in <cache>/osv/.

A URL (osv.dev's https://osv-vulnerabilities.storage.googleapis.com/Debian/all.zip) is fetched with the
package sources' HTTP client (kept connections, the environment's proxies) into a temporary file, at most
MAX_DB_BYTES, validated as OSV and only then renamed into place, beside a small JSON record: the URL, its
ETag and Last-Modified, the sha256 of the bytes and when they were fetched. A later run asks with
If-None-Match/If-Modified-Since and keeps the copy on 304. When the URL does not answer (no network, a
server error, a transfer cut short) the cached copy is used with a warning saying how old it is; with
nothing cached that is one error naming the way out (fetch it elsewhere, pass the file). A server that
answers with something other than an OSV database is an error either way, and nothing of it is kept.

The sha256 is of the file read, hashed again at each use: a scan's report and the build's cache key name the
bytes that were scanned, whatever happened to the cache in between.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http
import http.client
import json
import urllib.error
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler.errors import ConfigError
from assembler.fsutil import CHUNK, atomic_path, sha256_file, write_json
from assembler.log import log
from assembler.scan import MAX_DB_BYTES, Advisory, database_digest, load_advisories

CACHE_SUBDIR = "osv"
FETCH_TIMEOUT = 30.0  # per connect/read: a host that does not answer falls back to the cache soon enough
USER_AGENT = "assembler (scan)"
README = "see README: Vulnerability scan"


@dataclass(frozen=True)
class Database:
    """Where the advisories are, and what a report says of them so that a scan can be audited and repeated."""

    path: Path
    source: str  # the URL, or the local path
    sha256: str  # of the file, or of the tree for a directory
    fetched: str | None = None  # when the URL's bytes were downloaded (UTC, RFC 3339); None for a local path
    # A fresh download is parsed once to validate it; the scan reuses that parse instead of a second one.
    advisories: tuple[Advisory, ...] | None = field(default=None, compare=False, repr=False)

    def provenance(self) -> dict[str, str | None]:
        return {"source": self.source, "sha256": self.sha256, "fetched": self.fetched}

    def load(self) -> list[Advisory]:
        return list(self.advisories) if self.advisories is not None else load_advisories(self.path)


def is_url(db: str) -> bool:
    return urllib.parse.urlsplit(db).scheme in ("http", "https")


def open_database(db: str, cache: Path, *, base: Path | None = None) -> Database:
    """A URL fetched into (or revalidated in) cache/osv/, else a path, relative ones under `base`."""
    if is_url(db):
        return fetch(db, cache / CACHE_SUBDIR)
    path = Path(db).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.exists():
        raise ConfigError(f"no advisory database at {path}",
                          resolution="pass an OSV file, directory or zip, or its http(s) URL: `--db`, or scan.db in "
                                     f"image.yaml ({README})")
    return Database(path, str(path), database_digest(path))


# ------------------------------------------------------------------------------------------------ fetching

class _Interrupted(Exception):
    """The transfer broke off: as if the URL had not answered (the cached copy stays the one to use)."""


def fetch(url: str, root: Path, *, timeout: float = FETCH_TIMEOUT) -> Database:
    """The database at `url`: downloaded, revalidated, or (unreachable) the cached copy with a warning."""
    from assembler.packages.sources import open_url

    key = hashlib.sha256(url.encode()).hexdigest()[:32]
    path, record_path = root / f"{key}.osv", root / f"{key}.json"
    cached = _cached(path, record_path, url)
    headers = {"User-Agent": USER_AGENT}
    if cached is not None:
        if cached.get("etag"):
            headers["If-None-Match"] = cached["etag"]
        if cached.get("last_modified"):
            headers["If-Modified-Since"] = cached["last_modified"]
    with ExitStack() as stack:
        try:
            response = stack.enter_context(open_url(url, timeout=timeout, headers=headers))
        except urllib.error.HTTPError as exc:
            if exc.code == http.HTTPStatus.NOT_MODIFIED and cached is not None:
                write_json(record_path, {**cached, "checked": _now()})
                return Database(path, url, cached["sha256"], cached["fetched"])
            if exc.code < 500:  # the server answered: the URL is wrong, no stale copy hides that
                raise ConfigError(f"{url} answered {exc.code} {exc.reason}",
                                  resolution="check the URL, e.g. https://osv-vulnerabilities.storage.googleapis."
                                             f"com/Debian/all.zip ({README})") from exc
            failure = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            failure = str(getattr(exc, "reason", None) or exc)
        else:
            try:
                return _download(url, response, path, record_path)
            except _Interrupted as exc:
                failure = str(exc)
    if cached is None:
        raise ConfigError(f"cannot fetch the advisory database {url}: {failure}",
                          details=f"nothing cached for it in {root}",
                          resolution=f"download it where the URL is reachable (`curl -LO {url}`) and pass the file: "
                                     f"--db PATH (scan.db: PATH in image.yaml); {README}")
    log.warning("advisory database %s unreachable (%s): using the cached copy fetched %s ago (%s), last found "
                "current %s ago", url, failure, _age(cached["fetched"]), cached["fetched"],
                _age(cached.get("checked") or cached["fetched"]))
    return Database(path, url, cached["sha256"], cached["fetched"])


def _cached(path: Path, record_path: Path, url: str) -> dict[str, Any] | None:
    """The record of the cached copy, when it is for `url` and the file still holds the bytes it names."""
    try:
        record = json.loads(record_path.read_text())
        if (not isinstance(record, dict) or record.get("url") != url or not isinstance(record.get("fetched"), str)
                or record.get("sha256") != sha256_file(path)):
            return None
    except (OSError, ValueError):
        return None
    return record


def _download(url: str, response: Any, path: Path, record_path: Path) -> Database:
    length = _length(response.headers.get("Content-Length"))
    if length is not None and length > MAX_DB_BYTES:
        raise _too_big(url)
    digest, size = hashlib.sha256(), 0
    with atomic_path(path) as tmp:
        with tmp.open("wb") as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as exc:
                    raise _Interrupted(f"the transfer broke off after {size} bytes: {exc}") from exc
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_DB_BYTES:
                    raise _too_big(url)
                digest.update(chunk)
                out.write(chunk)
        if length is not None and size != length:
            # http.client ends a short body quietly: the length announced is the only sign of a cut transfer
            raise _Interrupted(f"the transfer broke off after {size} of {length} bytes")
        advisories = _validate(url, tmp)
    fetched = _now()
    write_json(record_path, {"url": url, "sha256": digest.hexdigest(), "size": size, "fetched": fetched,
                             "checked": fetched, "etag": response.headers.get("ETag"),
                             "last_modified": response.headers.get("Last-Modified")})
    log.info("fetched the advisory database %s (%d advisories, %d bytes)", url, len(advisories), size)
    return Database(path, url, digest.hexdigest(), fetched, tuple(advisories))


def _validate(url: str, tmp: Path) -> list[Advisory]:
    """The downloaded body is untrusted: every record is checked before it may replace the cached copy."""
    try:
        return load_advisories(tmp)
    except ConfigError as exc:
        raise ConfigError(f"{url} did not serve an OSV database: {exc.brief.replace(str(tmp), 'the download')}",
                          details=exc.details,
                          resolution="check the URL: osv.dev's exports are zips of OSV JSON records, e.g. https://"
                                     "osv-vulnerabilities.storage.googleapis.com/Debian/all.zip; nothing was "
                                     "cached") from exc


def _too_big(url: str) -> ConfigError:
    return ConfigError(f"{url} is larger than {MAX_DB_BYTES >> 30} GiB; not an advisory database",
                       resolution="use osv.dev's export for one ecosystem (Debian/all.zip); nothing was cached")


def _length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(stamp: str) -> str:
    try:
        seconds = (dt.datetime.now(dt.UTC) - dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC)).total_seconds()
    except ValueError:
        return "an unknown time"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "less than a minute"
