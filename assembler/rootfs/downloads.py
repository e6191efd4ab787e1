"""Pinned downloads: fetched on the host through the mirror map, verified, cached by content.

An image directory may hold downloads.yaml, a list of files its Containerfile needs from outside:

    - name: kubeadm
      url: https://dl.k8s.io/release/v1.30.14/bin/linux/amd64/kubeadm
      sha256: bf1f8af81af8ecf003cbc03a8700c6e94a74c183ee092bbc77b92270ada2be70
      dest: downloads/kubeadm
      optional: false

Each file lands in `<cache>/downloads/<sha256>` only after its digest matched (written to a temporary
name and renamed, so a wrong or partial download never enters the cache), then is copied into the build
context at `dest`. The URL is rewritten by the mirror map; the digest is not: a mirror must serve the
same bytes. Optional files that cannot be fetched are skipped, so one Containerfile can install them
"when available" (the Debian twin of the Kubernetes images uses this).
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from assembler.config import Arch
from assembler.errors import AssemblerError, ConfigError
from assembler.fsutil import CHUNK, atomic_path, sha256_file
from assembler.log import log
from assembler.mirrors import EXAMPLE, MIRRORS_ENV, MirrorMap

DOWNLOADS_FILE = "downloads.yaml"
DOWNLOADS_DIR = "downloads"
FETCH_TIMEOUT = 30.0  # seconds without data before giving up on a connection
USER_AGENT = "assembler (+https://github.com/; pinned download)"


class DownloadError(AssemblerError):
    """A pinned download could not be fetched or did not match its checksum."""


class Download(BaseModel):
    """One pinned file of downloads.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex SHA-256 of the file")
    dest: str = Field(description="path inside the build context, under downloads/")
    optional: bool = False
    arch: Arch | None = Field(None, description="only for builds of this architecture (default: every one)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "file://")):
            raise ValueError(f"{value!r} is not an http(s):// or file:// URL")
        return value

    @field_validator("dest")
    @classmethod
    def _dest(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or path.parts[:1] != (DOWNLOADS_DIR,) or len(path.parts) < 2:
            raise ValueError(f"dest {value!r} must be a relative path under {DOWNLOADS_DIR}/")
        return value


@dataclass(frozen=True)
class Fetched:
    """What happened to one download: for the manifest and the bill of materials."""

    name: str
    url: str  # the URL actually used (after the mirror map)
    sha256: str
    dest: str
    status: str  # "fetched", "cached" or "skipped"
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        data = {"name": self.name, "url": self.url, "sha256": self.sha256, "dest": self.dest,
                "status": self.status}
        return {**data, "reason": self.reason} if self.reason else data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Fetched:
        """A record read back from a manifest or a BOM's build inputs (untrusted: url and sha256 required)."""
        if not data.get("url") or not data.get("sha256"):
            raise ConfigError(f"a download record needs url and sha256: {dict(data)}",
                              resolution="list downloads as {url, sha256[, name, dest, status]}")
        url = str(data["url"])
        return cls(name=str(data.get("name") or url.rstrip("/").rsplit("/", 1)[-1]), url=url,
                   sha256=str(data["sha256"]).removeprefix("sha256:"), dest=str(data.get("dest", "")),
                   status=str(data.get("status", "fetched")), reason=str(data.get("reason", "")))


def load_downloads(path: Path, arch: str | None = None) -> list[Download]:
    """Read downloads.yaml; a missing file means no downloads. With `arch`, the entries for that architecture
    (those naming it and those naming none); without, every entry."""
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text()) or []
        items = TypeAdapter(list[Download]).validate_python(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid downloads file {path}", details=str(exc),
                          resolution="each entry needs name, url, sha256 (64 hex digits) and dest under "
                          "downloads/; see docs/kubernetes.md") from exc
    per_arch: set[str | None] = {d.arch for d in items if d.arch} or {None}
    for one in per_arch:
        dests = [d.dest for d in items if d.arch in (None, one)]
        if len(set(dests)) != len(dests):
            raise ConfigError(f"two downloads in {path} share a dest", resolution="give each file its own dest")
    return [d for d in items if arch is None or d.arch in (None, arch)]


def cache_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "downloads" / sha256


def cached(cache_dir: Path, item: Download) -> Path | None:
    """The verified cache entry for item, or None (a corrupted entry is removed)."""
    path = cache_path(cache_dir, item.sha256)
    if not path.is_file():
        return None
    if sha256_file(path) != item.sha256:
        log.warning("cache entry %s is corrupted; fetching again", path)
        path.unlink()
        return None
    return path


def fetch(item: Download, mirrors: MirrorMap, cache_dir: Path, *, timeout: float = FETCH_TIMEOUT) -> Path:
    """The verified file for item: from the cache, else fetched through the mirror map into the cache."""
    if (hit := cached(cache_dir, item)) is not None:
        return hit
    url = mirrors.url(item.url)
    final = cache_path(cache_dir, item.sha256)
    log.info("fetching %s from %s", item.name, url)
    with atomic_path(final) as tmp:
        actual = _stream(url, tmp, timeout, item)
        if actual != item.sha256:
            raise DownloadError(
                f"checksum mismatch for {item.name} from {url}",
                details=f"expected sha256 {item.sha256}\nactual   sha256 {actual}",
                resolution=_mismatch_hint(item, url),
            )
    return final


def _mismatch_hint(item: Download, url: str) -> str:
    via = "" if url == item.url else f" (the mirror map rewrote {item.url})"
    return (f"the server{via} sent different bytes than the pinned ones: check that the mirror serves the "
            f"upstream file unchanged; if upstream really changed, verify the new file against the "
            f"project's published checksum before updating the pin; nothing was written to the cache")


def _stream(url: str, dest: Path, timeout: float, item: Download) -> str:
    """Copy url to dest, hashing on the way; connection problems become a DownloadError."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"cannot fetch {item.name} from {url}: {reason}",
            resolution=f"check the network or serve the file from a mirror: {EXAMPLE}"
            f"\n(the map in use: ${MIRRORS_ENV} or ~/.config/assembler/mirrors.yaml)",
        ) from exc
    return digest.hexdigest()


def materialize(items: list[Download], mirrors: MirrorMap, cache_dir: Path, context: Path, *,
                skip: dict[str, str] | None = None) -> list[Fetched]:
    """Fetch every item and copy it to context/dest; skip optional ones that cannot be fetched.

    `skip` maps the sha256 of optional items already known to be unreachable to the reason (preflight).
    """
    (context / DOWNLOADS_DIR).mkdir(parents=True, exist_ok=True)  # so `COPY downloads/` never fails
    results = []
    for item in items:
        url = mirrors.url(item.url)
        if item.optional and skip and item.sha256 in skip:
            log.warning("optional download %s skipped: %s: %s", item.name, url, skip[item.sha256])
            results.append(Fetched(item.name, url, item.sha256, item.dest, "skipped", skip[item.sha256]))
            continue
        source = cached(cache_dir, item)
        status = "cached" if source is not None else "fetched"
        try:
            source = source or fetch(item, mirrors, cache_dir)
        except DownloadError as exc:
            if not item.optional or "checksum mismatch" in exc.brief:
                raise
            log.warning("optional download %s skipped: %s", item.name, exc.brief)
            results.append(Fetched(item.name, url, item.sha256, item.dest, "skipped", exc.brief))
            continue
        dest = context / item.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        dest.chmod(0o644)  # the Containerfile sets modes with `install -m`
        results.append(Fetched(item.name, url, item.sha256, item.dest, status))
    return results
