"""JUnit XML and the report helpers: suites per firmware plus hygiene, failures counted, exit status."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console

from assembler.boot import BootReport, BootResult, CheckResult, exit_status, print_summary, write_junit


def result(name: str, passed: bool, kind: str = "service") -> CheckResult:
    return CheckResult(name=name, kind=kind, passed=passed, message="ok" if passed else f"{name} broke")


def make_report(*, uefi_boots: bool = True, service_ok: bool = True, hygiene_ok: bool = True) -> BootReport:
    bios = BootResult(firmware="bios", accelerator="tcg", booted=True, boot_seconds=41.2, checks_seconds=9.5,
                      results=[result("ssh login", True, "boot"), result("service ssh", service_ok)],
                      console_log="out/console-bios.log")
    uefi = (BootResult(firmware="uefi", accelerator="tcg", booted=True, boot_seconds=55.0, checks_seconds=8.0,
                       results=[result("service ssh", True)], console_log="out/console-uefi.log")
            if uefi_boots else
            BootResult(firmware="uefi", accelerator="tcg", booted=False, console_log="out/console-uefi.log",
                       error="did not bring up SSH within 60s (uefi, tcg)\nlast console lines:\nBdsDxe"))
    return BootReport(disk="/out/debian-12/disk.qcow2", format="qcow2",
                      hygiene=[result("ssh-host-keys", hygiene_ok, "hygiene"),
                               result("machine-id", True, "hygiene")],
                      hygiene_seconds=27.0, runs=[bios, uefi])


def parse(report: BootReport, tmp_path: Path) -> ET.Element:
    path = write_junit(report, tmp_path / "junit.xml")
    return ET.parse(path).getroot()


def test_all_passing(tmp_path: Path) -> None:
    report = make_report()
    root = parse(report, tmp_path)
    assert root.tag == "testsuites"
    assert [s.get("name") for s in root.findall("testsuite")] == ["hygiene", "boot-bios", "boot-uefi"]
    assert root.get("failures") == "0" and root.get("errors") == "0"
    bios = root.find("testsuite[@name='boot-bios']")
    assert bios is not None and bios.get("tests") == "3"  # boot to SSH + two checks
    boot_case = bios.find("testcase[@name='boot to SSH']")
    assert boot_case is not None and boot_case.get("time") == "41.200"
    assert report.passed and exit_status(report) == 0
    assert report.failure_summary() == "all checks passed"


def test_failures_and_boot_errors(tmp_path: Path) -> None:
    report = make_report(uefi_boots=False, service_ok=False, hygiene_ok=False)
    root = parse(report, tmp_path)
    assert root.get("failures") == "2" and root.get("errors") == "1"
    failure = root.find("testsuite[@name='boot-bios']/testcase[@name='service ssh']/failure")
    assert failure is not None and failure.get("message") == "service ssh broke"
    error = root.find("testsuite[@name='boot-uefi']/testcase[@name='boot to SSH']/error")
    assert error is not None and "BdsDxe" in (error.text or "")
    assert exit_status(report) == 1
    summary = report.failure_summary()
    for fragment in ("hygiene ssh-host-keys", "bios service ssh", "uefi: did not bring up SSH"):
        assert fragment in summary


def test_hygiene_failure_alone_fails_the_report() -> None:
    assert exit_status(make_report(hygiene_ok=False)) == 1


def test_no_runs_is_not_a_pass() -> None:
    assert exit_status(BootReport(disk="d", format="raw")) == 1


def test_summary_prints_every_check() -> None:
    console = Console(record=True, width=160)
    print_summary(make_report(service_ok=False), console)
    text = console.export_text()
    fragments = ("ssh-host-keys", "bios (tcg)", "service ssh broke", "FAIL", "SSH up after 41.2s", "FAILED")
    for fragment in fragments:
        assert fragment in text


def test_report_round_trips_as_json() -> None:
    report = make_report()
    data = report.as_dict()
    assert data["runs"][0]["boot_seconds"] == 41.2
    assert BootReport.model_validate(data) == report
