"""assembler scan: OSV advisories against an image's Debian packages (dpkg version order, ranges, severities)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from assembler import bom
from assembler.errors import ConfigError
from assembler.scan import Advisory, Installed, installed_from, load_advisories, match, severity_of
from tests.helpers import cli
from tests.unit.bomdata import FACTS, rootfs

GLIBC = Installed("libc6", "2.36-9+deb12u10", "glibc", "2.36-9+deb12u10")
OLD_GLIBC = Installed("libc6", "2.36-9+deb12u1", "glibc", "2.36-9+deb12u1")
ZLIB = Installed("zlib1g", "1:1.2.13.dfsg-1", "zlib", "1:1.2.13.dfsg-1")


def osv(ident: str, package: str, events: list[dict[str, str]], *, ecosystem: str = "Debian:12",
        **extra: Any) -> dict[str, Any]:
    """A record shaped like osv.dev's Debian export (source package, ECOSYSTEM range)."""
    affected = {"package": {"ecosystem": ecosystem, "name": package},
                "ranges": [{"type": "ECOSYSTEM", "events": events}]}
    affected.update(extra.pop("affected_extra", {}))
    return {"id": ident, "modified": "2024-01-01T00:00:00Z", "affected": [affected], **extra}


LOONEY = osv("DSA-5514-1", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u3"}],
             aliases=["CVE-2023-4911"], summary="glibc: buffer overflow in ld.so (Looney Tunables)",
             severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"}])


def findings(records: list[dict[str, Any]], installed: list[Installed], release: str | None = "12") -> list[Any]:
    return match(installed, [Advisory.model_validate(r) for r in records], release)


def test_a_fixed_version_is_clean_and_an_older_one_is_affected_with_its_fix() -> None:
    assert findings([LOONEY], [GLIBC]) == []
    [hit] = findings([LOONEY], [OLD_GLIBC])
    assert (hit.package, hit.advisory, hit.aliases, hit.fixed) == ("libc6", "DSA-5514-1", ("CVE-2023-4911",),
                                                                   "2.36-9+deb12u3")
    assert hit.severity == "high"  # CVSS 7.8


def test_dpkg_version_order_epochs_and_tildes() -> None:
    unfixed = osv("CVE-2023-45853", "zlib", [{"introduced": "0"}])
    assert [f.fixed for f in findings([unfixed], [ZLIB])] == [None]  # no fix yet: affected, "not yet"
    # 1:1.2.13 (epoch 1) is newer than any 1.3 without one; ~ sorts before the release it precedes.
    assert findings([osv("X-1", "zlib", [{"introduced": "0"}, {"fixed": "1.3"}])], [ZLIB]) == []
    tilde = osv("X-2", "zlib", [{"introduced": "0"}, {"fixed": "1:1.2.13.dfsg-1~deb12u1"}])
    assert findings([tilde], [ZLIB]) == []
    later = osv("X-3", "zlib", [{"introduced": "0"}, {"fixed": "1:1.2.13.dfsg-1+deb12u1"}])
    assert [f.fixed for f in findings([later], [ZLIB])] == ["1:1.2.13.dfsg-1+deb12u1"]


def test_ranges_last_affected_limit_listed_versions_and_reintroduction() -> None:
    last = osv("X-4", "glibc", [{"introduced": "2.36-1"}, {"last_affected": "2.36-9+deb12u1"}])
    assert len(findings([last], [OLD_GLIBC])) == 1 and findings([last], [GLIBC]) == []
    limit = osv("X-5", "glibc", [{"introduced": "0"}, {"limit": "2.36-9+deb12u2"}])
    assert len(findings([limit], [OLD_GLIBC])) == 1 and findings([limit], [GLIBC]) == []
    listed = osv("X-6", "glibc", [], affected_extra={"versions": ["2.36-9+deb12u10"]})
    assert len(findings([listed], [GLIBC])) == 1
    again = osv("X-7", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u3"},
                                 {"introduced": "2.36-9+deb12u9"}, {"fixed": "2.36-9+deb12u11"}])
    assert [f.fixed for f in findings([again], [GLIBC])] == ["2.36-9+deb12u11"]


def test_the_release_and_the_source_package_decide_what_matches() -> None:
    other = osv("X-8", "glibc", [{"introduced": "0"}], ecosystem="Debian:11")
    assert findings([other], [GLIBC]) == [] and len(findings([other], [GLIBC], release=None)) == 1
    assert len(findings([osv("X-9", "glibc", [{"introduced": "0"}], ecosystem="Debian")], [GLIBC])) == 1
    assert findings([osv("X-10", "libc6", [{"introduced": "0"}])], [GLIBC]) == []  # advisories name sources
    assert findings([osv("X-11", "glibc", [{"introduced": "0"}], ecosystem="PyPI")], [GLIBC]) == []


@pytest.mark.parametrize(("extra", "expected"), [
    ({"database_specific": {"severity": "MODERATE"}}, "medium"),
    ({"affected_extra": {"ecosystem_specific": {"urgency": "unimportant"}}}, "negligible"),
    ({"severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}, "critical"),
    ({"severity": [{"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:L/VI:N/VA:N/SC:N/SI:N/SA:N"}]},
     "medium"),
    ({"severity": [{"type": "CVSS_V3", "score": "not a vector"}]}, "unknown"),
    ({}, "unknown"),
])
def test_severity_from_the_databases_word_else_the_cvss_rating(extra: dict[str, Any], expected: str) -> None:
    record = Advisory.model_validate(osv("X-12", "glibc", [{"introduced": "0"}], **extra))
    assert severity_of(record, record.affected[0]) == expected


def test_databases_load_from_a_file_a_directory_or_a_zip(tmp_path: Path) -> None:
    records = [LOONEY, osv("CVE-2023-45853", "zlib", [{"introduced": "0"}])]
    (tmp_path / "list.json").write_text(json.dumps(records))
    (tmp_path / "dir").mkdir()
    for record in records:
        (tmp_path / "dir" / f"{record['id']}.json").write_text(json.dumps(record))
    with zipfile.ZipFile(tmp_path / "all.zip", "w") as archive:
        for record in records:
            archive.writestr(f"{record['id']}.json", json.dumps(record))
    for db in ("list.json", "dir", "all.zip"):
        assert sorted(a.id for a in load_advisories(tmp_path / db)) == ["CVE-2023-45853", "DSA-5514-1"]


@pytest.mark.parametrize("content", ["{not json", '{"id": "X"', '[{"affected": []}]', '{"id": "X", "affected": 3}'])
def test_a_malformed_database_is_one_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "db.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        load_advisories(tmp_path / "db.json")
    assert "OSV" in err.value.resolution
    with pytest.raises(ConfigError, match="no advisory database"):
        load_advisories(tmp_path / "absent.json")


def test_installed_packages_carry_their_source() -> None:
    got = installed_from([{"name": "libc6", "version": "2.36-9+deb12u10", "source": "glibc",
                           "source_version": "2.36-9+deb12u10"}, {"name": "hello", "version": "2.10-3"}])
    assert got == [GLIBC, Installed("hello", "2.10-3", "hello", "2.10-3")]


def test_the_command_on_a_bom_fails_on_request_and_prints_json(tmp_path: Path) -> None:
    doc = bom.build_spdx(rootfs(tmp_path), **FACTS)
    (tmp_path / "demo.spdx.json").write_text(json.dumps(doc))
    assert bom.release_of(doc) == {"ID": "debian", "VERSION_ID": "12"}
    db = tmp_path / "db.json"
    db.write_text(json.dumps([osv("X-13", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u11"}],
                                  database_specific={"severity": "HIGH"})]))
    failing = cli("scan", str(tmp_path / "demo.spdx.json"), "--db", str(db), "--fail-on", "high", "--json")
    assert failing.returncode == 3, failing.stderr[-2000:]
    report = json.loads(failing.stdout)
    assert report["release"] == "12" and report["failed"] is True
    assert [(f["package"], f["fixed"], f["severity"]) for f in report["findings"]] == [
        ("libc6", "2.36-9+deb12u11", "high")]
    assert cli("scan", str(tmp_path / "demo.spdx.json"), "--db", str(db), "--fail-on", "critical").returncode == 0
    table = cli("scan", str(tmp_path / "demo.spdx.json"), "--db", str(db))
    assert table.returncode == 0 and "X-13" in table.stdout and "2.36-9+deb12u11" in table.stdout
    bad = cli("scan", str(tmp_path / "demo.spdx.json"), "--db", str(db), "--fail-on", "severe")
    assert bad.returncode == 1 and "invalid --fail-on" in bad.stdout + bad.stderr


# ------------------------------------------------------------------------------------------- the phase

def _phase_ctx(tmp_path: Path, db: Path | str, fail_on: str | None) -> tuple[Any, Any]:
    from assembler.config import ImageConfig, ImageSpec
    from assembler.phases.scan import ScanPhase
    from assembler.pipeline import BuildRun
    from assembler.store import Entry, Store

    disk = tmp_path / "disk-entry"
    disk.mkdir(exist_ok=True)
    bom.write_document(bom.build_spdx(rootfs(tmp_path), **FACTS), disk / "bom.spdx.json")
    config = ImageConfig.model_validate({"scan": {"db": str(db), "fail_on": fail_on}})
    spec = ImageSpec(name="demo", context=tmp_path, containerfile=tmp_path / "Containerfile", config=config)
    ctx = BuildRun(spec=spec, store=Store(tmp_path / "cache"), output_dir=tmp_path / "out", formats=["raw"])
    ctx.results["disk"] = Entry("k" * 64, disk, {})
    return ctx, ScanPhase(ctx)


def test_the_scan_phase_reads_the_disks_bom_and_fails_the_build_at_fail_on(tmp_path: Path) -> None:
    from assembler.errors import ScanError

    db = tmp_path / "db.json"
    db.write_text(json.dumps([osv("X-14", "glibc", [{"introduced": "0"}], database_specific={"severity": "HIGH"})]))
    _ctx, phase = _phase_ctx(tmp_path, db, "critical")
    (tmp_path / "run1").mkdir()
    meta = phase.execute(tmp_path / "run1")
    assert meta["scan"]["counts"] == {"high": 1} and meta["scan"]["fail_on"] == "critical"
    assert json.loads((tmp_path / "run1" / "scan.json").read_text())["findings"][0]["advisory"] == "X-14"
    key = phase.key()
    _ctx, phase = _phase_ctx(tmp_path, db, "high")
    assert phase.key() != key  # the threshold is in the key
    (tmp_path / "run2").mkdir()
    with pytest.raises(ScanError, match="1 finding") as err:
        phase.execute(tmp_path / "run2")
    assert "X-14" in err.value.details and (tmp_path / "out" / "demo.scan.json").is_file()
    db.write_text(json.dumps([osv("X-14", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u10"}])]))
    assert _phase_ctx(tmp_path, db, "critical")[1].key() != key  # a new feed is a new key
    fixed = _phase_ctx(tmp_path, db, "high")[1]
    (tmp_path / "run3").mkdir()
    assert fixed.execute(tmp_path / "run3")["scan"]["findings"] == 0  # a new feed scans again and passes


def test_a_scan_db_that_is_not_there_is_a_config_error_when_planning(tmp_path: Path) -> None:
    _ctx, phase = _phase_ctx(tmp_path, tmp_path / "absent.zip", None)
    with pytest.raises(ConfigError, match="no advisory database"):
        phase.key()
