"""`assembler scan` on the shared debian-12 build, with advisories taken from the image's own data.

No vulnerability feed is reachable here, and the mirror moves on, so the advisory is made at test time from
what Debian itself shipped in the image: a CVE that a package's changelog.Debian.gz names, for that source
package and its installed version (real IDs and versions, whatever day the image was built).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.e2e.conftest import Built
from tests.helpers import REPO, cli

pytestmark = pytest.mark.e2e
HEADER = re.compile(r"^([a-z0-9][a-z0-9+.-]+) \(([^)\s]+)\) ")
CVE = re.compile(r"\bCVE-\d{4}-\d{4,}\b")


def named_cve(rootfs_tar: Path) -> tuple[str, str, str]:
    """(source package, installed source version, a CVE its changelog names), first package by path."""
    with tarfile.open(rootfs_tar) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not re.fullmatch(r"usr/share/doc/[^/]+/changelog\.Debian\.gz", member.name) or not member.isfile():
                continue
            text = gzip.decompress(tar.extractfile(member).read()).decode("utf-8", "replace")  # type: ignore[union-attr]
            header, cve = HEADER.match(text), CVE.search(text)
            if header and cve:
                return header.group(1), header.group(2), cve.group(0)
    raise AssertionError(f"no changelog in {rootfs_tar} names a CVE")


def write_advisory(db: Path, source: str, cve: str, events: list[dict[str, str]]) -> None:
    db.write_text(json.dumps([{"id": cve, "modified": "2026-01-01T00:00:00Z", "summary": f"{source}: {cve}",
                               "database_specific": {"severity": "HIGH"},
                               "affected": [{"package": {"ecosystem": "Debian:12", "name": source},
                                             "ranges": [{"type": "ECOSYSTEM", "events": events}]}]}]))


def test_scan_fails_on_an_affecting_advisory_and_passes_once_it_is_fixed(debian12: Built, tmp_path: Path) -> None:
    source, version, cve = named_cve(debian12.output("rootfs-tar"))
    db = tmp_path / "advisories.json"

    def advisory(events: list[dict[str, str]]) -> None:
        write_advisory(db, source, cve, events)

    advisory([{"introduced": "0"}])  # not fixed yet: the installed version is affected
    failing = cli("scan", str(debian12.out), "--db", str(db), "--fail-on", "high", "--json")
    assert failing.returncode == 3, failing.stderr[-3000:]
    report = json.loads(failing.stdout)
    assert report["release"] == "12" and report["packages"] > 100
    assert {f["source"] for f in report["findings"]} == {source}
    assert all(f["advisory"] == cve and f["source_version"] == version for f in report["findings"])

    advisory([{"introduced": "0"}, {"fixed": version}])  # fixed in exactly the installed version
    passing = cli("scan", str(debian12.out), "--db", str(db), "--fail-on", "high", "--json")
    assert passing.returncode == 0, passing.stderr[-3000:]
    assert json.loads(passing.stdout)["findings"] == []
    # The disk carries its own BOM: the same answer from the raw disk alone.
    disk = cli("scan", str(debian12.output("raw")), "--db", str(db), "--json")
    assert disk.returncode == 0 and json.loads(disk.stdout)["packages"] == report["packages"]


def test_the_scan_phase_fails_the_build_then_passes_on_a_fixed_feed(debian12: Built, tmp_path: Path) -> None:
    """image.yaml scan: runs after the disk: a finding at fail_on stops the build with the report in out/."""
    source, version, cve = named_cve(debian12.output("rootfs-tar"))
    image, db, out = tmp_path / "debian-12", tmp_path / "feed.json", tmp_path / "out"
    shutil.copytree(REPO / "Containerfiles" / "debian-12", image)
    with (image / "image.yaml").open("a") as handle:
        handle.write(f"scan: {{db: {db}, fail_on: high}}\n")
    write_advisory(db, source, cve, [{"introduced": "0"}])
    args = ("build", str(image), "--phases", "scan", "--no-boot-test", "--cache-dir", str(debian12.cache),
            "--output", str(out))
    failed = cli(*args)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "at or above high" in failed.stdout + failed.stderr and cve in failed.stdout + failed.stderr
    report = json.loads((out / "debian-12.scan.json").read_text())
    assert report["failed"] is True and {f["source"] for f in report["findings"]} == {source}

    write_advisory(db, source, cve, [{"introduced": "0"}, {"fixed": version}])
    passed = cli(*args)
    assert passed.returncode == 0, passed.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scan"]["findings"] == 0 and manifest["scan"]["fail_on"] == "high"
    sources = {p["name"]: p["source"] for p in manifest["phases"]}
    assert sources["rootfs"] == "local cache" and sources["disk"] == "local cache"  # only the scan ran again
    assert json.loads((out / "debian-12.scan.json").read_text())["failed"] is False
