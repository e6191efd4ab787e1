"""Vulnerability report: every Debian package of an image matched against advisories in OSV format.

The packages come from what `inspect` reads (an out/IMAGE directory's BOM, a disk's embedded BOM or dpkg
database, an image). The advisories come from `--db`: an OSV JSON file, a directory of them, or a zip such as
osv.dev's per-ecosystem export (https://osv-vulnerabilities.storage.googleapis.com/Debian/all.zip). Debian's
records name source packages in the `Debian:RELEASE` ecosystem with ECOSYSTEM ranges; a package is affected
when its source version lies in a range (dpkg's version order, from python-debian) or is listed.

An advisory file is untrusted input: every record is validated, and a malformed one is one clear error.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cvss import CVSS3, CVSS4
from debian.debian_support import Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assembler.errors import ConfigError
from assembler.severity import SEVERITIES, Severity
from assembler.severity import at_least as _at_least

# Debian's tracker urgencies and the GitHub-style words osv.dev carries, onto one scale.
_WORDS: dict[str, Severity] = {
    "unimportant": "negligible", "negligible": "negligible", "none": "negligible", "low": "low",
    "medium": "medium", "moderate": "medium", "high": "high", "important": "high", "critical": "critical",
}
MAX_DB_BYTES = 2 << 30  # osv.dev's whole Debian export is about 100 MB unpacked; more is not a database


# ------------------------------------------------------------------------------------------- OSV model

class _Osv(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OsvPackage(_Osv):
    ecosystem: str
    name: str


class OsvEvent(_Osv):
    introduced: str | None = None
    fixed: str | None = None
    last_affected: str | None = None
    limit: str | None = None


class OsvRange(_Osv):
    type: str
    events: tuple[OsvEvent, ...] = ()


class OsvAffected(_Osv):
    package: OsvPackage
    ranges: tuple[OsvRange, ...] = ()
    versions: tuple[str, ...] = ()
    ecosystem_specific: dict[str, Any] = Field(default_factory=dict)
    database_specific: dict[str, Any] = Field(default_factory=dict)


class OsvSeverity(_Osv):
    type: str
    score: str


class Advisory(_Osv):
    """One OSV record (https://ossf.github.io/osv-schema/), the fields a match needs."""

    id: str = Field(min_length=1, max_length=200)
    aliases: tuple[str, ...] = ()
    summary: str = ""
    severity: tuple[OsvSeverity, ...] = ()
    affected: tuple[OsvAffected, ...] = ()
    database_specific: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- loading

def load_advisories(db: Path) -> list[Advisory]:
    """Every record of an OSV file (one record or a list), a directory of them, or a zip of them."""
    if not db.exists():
        raise ConfigError(f"no advisory database at {db}",
                          resolution="pass --db FILE|DIR|ZIP in OSV format, e.g. osv.dev's Debian export "
                                     "(see README: Vulnerability scan)")
    try:
        return [_advisory(doc, where) for where, doc in _documents(db)]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as exc:  # a member that does not unpack
        raise ConfigError(f"{db} is a damaged zip", details=str(exc)[:500],
                          resolution="pass an intact OSV zip (fetch it again)") from exc


def _documents(db: Path) -> Iterator[tuple[str, Any]]:
    if db.is_dir():
        for path in sorted(db.rglob("*.json")):
            yield str(path), _json(path.read_bytes(), str(path))
    elif zipfile.is_zipfile(db):
        with zipfile.ZipFile(db) as archive:
            if sum(i.file_size for i in archive.infolist()) > MAX_DB_BYTES:
                raise ConfigError(f"{db} unpacks to more than {MAX_DB_BYTES >> 30} GiB; not an advisory database",
                                  resolution="pass osv.dev's export for one ecosystem (Debian/all.zip)")
            for info in archive.infolist():
                if info.filename.endswith(".json") and not info.is_dir():
                    yield f"{db}:{info.filename}", _json(archive.read(info), f"{db}:{info.filename}")
    else:
        data = _json(db.read_bytes(), str(db))
        for i, doc in enumerate(data if isinstance(data, list) else [data]):
            yield f"{db}[{i}]", doc


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{where} is not JSON", details=str(exc)[:500],
                          resolution="pass advisories in OSV JSON format") from exc


def _advisory(doc: Any, where: str) -> Advisory:
    try:
        return Advisory.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{where} is not an OSV record", details=str(exc)[:2000],
                          resolution="pass advisories in OSV JSON format (https://ossf.github.io/osv-schema/)") from exc


# -------------------------------------------------------------------------------------------- matching

@dataclass(frozen=True)
class Installed:
    """A binary package of the image with the source it was built from (what Debian's advisories name)."""

    name: str
    version: str
    source: str
    source_version: str


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    source: str
    source_version: str
    advisory: str
    aliases: tuple[str, ...]
    severity: Severity
    fixed: str | None  # the first fixed version after the installed one; None: no fix yet
    summary: str


def ecosystem_matches(ecosystem: str, release: str | None) -> bool:
    """'Debian' matches any release, 'Debian:12' only 12 (and 'Debian:12.5' 12 too)."""
    name, _, version = ecosystem.partition(":")
    if name != "Debian":
        return False
    return not version or release is None or version.split(".")[0] == release.split(".")[0]


def _in_range(version: Version, events: Sequence[OsvEvent]) -> tuple[bool, str | None]:
    """Whether the version lies in an ECOSYSTEM range, and the fix that ends the interval it is in."""
    affected, fixed = False, None
    for event in sorted(events, key=_event_order):
        if event.introduced is not None:
            if event.introduced == "0" or version >= Version(event.introduced):
                affected, fixed = True, None
        elif _closes(event, version):
            affected = False
        elif event.fixed is not None and affected and fixed is None:
            fixed = event.fixed
    return affected, fixed


def _closes(event: OsvEvent, version: Version) -> bool:
    """The interval that was open ends at or below `version` (fixed/limit) or below it (last_affected)."""
    if event.fixed is not None:
        return version >= Version(event.fixed)
    if event.last_affected is not None:
        return version > Version(event.last_affected)
    return event.limit is not None and version >= Version(event.limit)


def _event_order(event: OsvEvent) -> Version:
    value = event.introduced or event.fixed or event.last_affected or event.limit or "0"
    return Version("0") if value == "0" else Version(value)


def affects(entry: OsvAffected, version: str) -> tuple[bool, str | None]:
    if version in entry.versions:
        return True, None
    installed = Version(version)
    for rng in entry.ranges:
        if rng.type == "ECOSYSTEM":
            hit, fixed = _in_range(installed, rng.events)
            if hit:
                return True, fixed
    return False, None


def severity_of(advisory: Advisory, entry: OsvAffected) -> Severity:
    """The database's own word when it gives one, else the CVSS base score's rating."""
    for source in (entry.ecosystem_specific, entry.database_specific, advisory.database_specific):
        word = str(source.get("severity") or source.get("urgency") or "").lower().split()
        if word and word[0] in _WORDS:
            return _WORDS[word[0]]
    rated: list[Severity] = []
    for item in advisory.severity:
        try:
            vector = CVSS4(item.score) if item.type == "CVSS_V4" else CVSS3(item.score)
        except Exception:
            continue
        rating = str(vector.severity if isinstance(vector, CVSS4) else vector.severities()[0]).lower()
        if rating in _WORDS:
            rated.append(_WORDS[rating])
    return max(rated, key=SEVERITIES.index) if rated else "unknown"


def match(installed: Iterable[Installed], advisories: Iterable[Advisory], release: str | None) -> list[Finding]:
    """Each (package, advisory) pair where the package's source version is affected, most severe first."""
    by_source: dict[str, list[Installed]] = {}
    for package in installed:
        by_source.setdefault(package.source, []).append(package)
    found: dict[tuple[str, str], Finding] = {}
    for advisory in advisories:
        for entry in advisory.affected:
            if not ecosystem_matches(entry.package.ecosystem, release):
                continue
            for package in by_source.get(entry.package.name, []):
                hit, fixed = affects(entry, package.source_version)
                if hit and (package.name, advisory.id) not in found:
                    found[(package.name, advisory.id)] = Finding(
                        package.name, package.version, package.source, package.source_version, advisory.id,
                        advisory.aliases, severity_of(advisory, entry), fixed, advisory.summary[:200])
    return sorted(found.values(), key=lambda f: (-SEVERITIES.index(f.severity), f.package, f.advisory))


def installed_from(packages: Sequence[Mapping[str, str]]) -> list[Installed]:
    """inspect's package list (BOM or dpkg database): binary name, version, source and source version."""
    return [Installed(p["name"], p.get("version", ""), p.get("source") or p["name"],
                      p.get("source_version") or p.get("version", "")) for p in packages if p.get("version")]


def at_least(findings: Iterable[Finding], threshold: Severity) -> list[Finding]:
    return [f for f in findings if _at_least(f.severity, threshold)]


@dataclass(frozen=True)
class ScanReport:
    release: str | None
    packages: int
    advisories: int
    findings: tuple[Finding, ...]
    db: Mapping[str, str | None] | None = None  # the database's source, sha256 and fetch time (scan_db)

    def failing(self, threshold: Severity | None) -> list[Finding]:
        return at_least(self.findings, threshold) if threshold else []

    def counts(self) -> dict[str, int]:
        return {s: n for s in SEVERITIES if (n := sum(1 for f in self.findings if f.severity == s))}

    def as_dict(self, threshold: Severity | None) -> dict[str, Any]:
        return {"release": self.release, "packages": self.packages, "advisories": self.advisories,
                "counts": self.counts(), "findings": [asdict(f) for f in self.findings], "fail_on": threshold,
                "failed": bool(self.failing(threshold)), "db": dict(self.db) if self.db is not None else None}


def scan_packages(packages: Sequence[Mapping[str, str]], release: str | None, advisories: Sequence[Advisory],
                  db: Mapping[str, str | None] | None = None) -> ScanReport:
    """inspect's (or the BOM's) package list against the advisories (`db`: where they came from)."""
    installed = installed_from(packages)
    return ScanReport(release, len(installed), len(advisories), tuple(match(installed, advisories, release)), db)


def database_digest(db: Path) -> str:
    """What a scan's cache key holds of its database: the file's sha256, or the tree's for a directory."""
    from assembler.fsutil import sha256_file, sha256_tree

    if db.is_dir():
        return sha256_tree(db)
    if db.is_file():
        return sha256_file(db)
    raise ConfigError(f"no advisory database at {db}",
                      resolution="set scan.db in image.yaml to an OSV file, directory or zip (see README: "
                                 "Vulnerability scan)")
