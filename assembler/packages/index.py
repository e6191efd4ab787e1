"""Debian archive index files: the signed InRelease, the Packages lists it names, and pool paths."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from assembler.errors import AssemblerError
from assembler.run import require_tool, run

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_ARCHIVE_RE = re.compile(r"^(https?://.+?)/(dists|pool)/")
_BY_HASH_RE = re.compile(r"/by-hash/SHA256/([0-9a-f]{64})$")
_PACKAGES_RE = re.compile(r"(^|/)Packages(\.xz|\.gz|\.bz2)?$")


@dataclass(frozen=True)
class ListedFile:
    """A file an InRelease lists, relative to its dists/SUITE/ directory."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Release:
    date: str | None
    files: dict[str, ListedFile]  # by path
    valid_until: str | None = None

    def by_sha256(self, sha256: str) -> ListedFile | None:
        return next((f for f in self.files.values() if f.sha256 == sha256), None)


@dataclass(frozen=True)
class PackageRecord:
    """A Packages stanza's identity and the pool file it names."""

    name: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str


def archive_of(url: str) -> str | None:
    """The archive root of a dists/ or pool/ URL (http://deb.debian.org/debian), else None."""
    match = _ARCHIVE_RE.match(url)
    return match.group(1) if match else None


def by_hash(url: str) -> str | None:
    match = _BY_HASH_RE.search(url)
    return match.group(1) if match else None


def is_packages(path: str) -> bool:
    return bool(_PACKAGES_RE.search(path))


def suite_dir(url: str) -> str:
    """http://x/debian/dists/bookworm/main/... -> http://x/debian/dists/bookworm/"""
    head, _, rest = url.partition("/dists/")
    return f"{head}/dists/{rest.split('/', 1)[0]}/"


def parse_release(data: bytes) -> Release:
    """The Date and the SHA256 file list of an (In)Release; the signature is checked by verify_inrelease."""
    text = data.decode("utf-8", errors="replace")
    files: dict[str, ListedFile] = {}
    date = valid_until = None
    in_sha = False
    for line in text.splitlines():
        if line.startswith("Date:"):
            date = line.split(":", 1)[1].strip()
        if line.startswith("Valid-Until:"):
            valid_until = line.split(":", 1)[1].strip()
        if line.startswith("SHA256:"):
            in_sha = True
            continue
        if in_sha:
            if not line.startswith(" "):
                in_sha = False
                continue
            parts = line.split()
            if len(parts) == 3 and re.fullmatch(r"[0-9a-f]{64}", parts[0]) and parts[1].isdigit():
                files[parts[2]] = ListedFile(parts[2], parts[0], int(parts[1]))
    return Release(date, files, valid_until)


def verify_inrelease(path: Path, keyrings: list[Path], url: str) -> None:
    """gpgv against the archive keyrings; apt checks again inside the build, this guards the store."""
    gpgv = require_tool("gpgv", hint="verifies the signed InRelease files of the apt archives")
    cmd: list[str | Path] = [gpgv, "--quiet"]
    for keyring in keyrings:
        cmd += ["--keyring", keyring]
    proc = run([*cmd, path], check=False)
    if proc.returncode != 0:
        raise AssemblerError(f"the signature of {url} does not verify",
                             details=(proc.stderr or b"").decode(errors="replace")[-1500:],
                             resolution="check the mirror (and the recipe's keyring); a mirror that serves "
                                        "unsigned or re-signed indexes cannot be used")


def decompress(data: bytes, path: str) -> bytes:
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".bz2"):
        return bz2.decompress(data)
    return data


def parse_packages(data: bytes) -> list[PackageRecord]:
    """The stanzas of an uncompressed Packages file (only the fields a lock needs)."""
    records = []
    for stanza in data.decode("utf-8", errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        try:
            records.append(PackageRecord(fields["Package"], fields["Version"], fields["Architecture"],
                                         fields["Filename"], int(fields["Size"]), fields["SHA256"]))
        except (KeyError, ValueError):
            continue  # a stanza without a pool file (or a truncated tail) names nothing to fetch
    return records
