"""Where a locked file comes from when the store lacks it: the mirror map's mirror, then a snapshot mirror.

Every byte fetched is checked against the sha256 the lock or a signed index names before it is kept; a
source that answers with other bytes is an error, never a fallback.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assembler.errors import AssemblerError
from assembler.fsutil import CHUNK
from assembler.log import log
from assembler.mirrors import MirrorMap
from assembler.packages.store import IntegrityError, PackageStore

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

    def __init__(self, mirrors: MirrorMap, *, snapshot_dates: dict[str, str] | None = None) -> None:
        self.mirrors = mirrors
        self.snapshot_dates = snapshot_dates or {}  # archive URL -> the lock's InRelease Date there

    def candidates(self, url: str) -> list[str]:
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
                with urllib.request.urlopen(_request(candidate), timeout=TIMEOUT) as response:
                    data: bytes = response.read()
                    return data
            except (urllib.error.URLError, OSError, ValueError) as exc:
                errors.append(f"{candidate}: {getattr(exc, 'reason', None) or exc}")
        raise Unavailable(f"cannot fetch {url}", details="\n".join(errors),
                          resolution="check the network or the mirror map (ASSEMBLER_MIRRORS)")

    def fetch(self, url: str, sha256: str, store: PackageStore, *, what: str) -> Path:
        """The verified file: fetched from the first source that has it into the store."""
        errors = []
        for candidate in self.candidates(url):
            try:
                with urllib.request.urlopen(_request(candidate), timeout=TIMEOUT) as response:
                    log.debug("fetching %s from %s", what, candidate)
                    return store.put(sha256, _chunks(response), what=what, where=candidate)
            except IntegrityError:
                raise
            except (urllib.error.URLError, OSError, ValueError) as exc:
                errors.append(f"{candidate}: {getattr(exc, 'reason', None) or exc}")
        raise Unavailable(f"{what} is in no source", details="\n".join(errors),
                          resolution="run `assembler lock IMAGE --update`, or add a snapshot mirror or a bundle")

    def available(self, url: str) -> bool:
        """A HEAD on each source; True when one has the file (its bytes are verified when fetched)."""
        for candidate in self.candidates(url):
            try:
                with urllib.request.urlopen(_request(candidate, "HEAD"), timeout=PROBE_TIMEOUT):
                    return True
            except (urllib.error.URLError, OSError, ValueError):
                continue
        return False


def _request(url: str, method: str = "GET") -> urllib.request.Request:
    return urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT})


def _chunks(response: Any) -> Iterator[bytes]:
    while chunk := response.read(CHUNK):
        yield chunk
