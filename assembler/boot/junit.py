"""JUnit XML for CI: one testsuite for the artefact's hygiene and one per booted firmware."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from assembler.boot.checks import CheckResult
from assembler.boot.report import BootReport, BootResult
from assembler.fsutil import atomic_path


def _case(suite: ET.Element, classname: str, result: CheckResult, seconds: float = 0.0) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=result.name, time=f"{seconds:.3f}")
    if result.passed:
        if result.message:
            ET.SubElement(case, "system-out").text = result.message
    else:
        failure = ET.SubElement(case, "failure", message=result.message, type=result.kind)
        failure.text = result.message


def _suite(root: ET.Element, name: str, seconds: float | None) -> ET.Element:
    return ET.SubElement(root, "testsuite", name=name, time=f"{seconds or 0.0:.3f}")


def _finish(suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
    suite.set("skipped", "0")


def _boot_suite(root: ET.Element, run: BootResult) -> None:
    total = (run.boot_seconds or 0.0) + (run.checks_seconds or 0.0)
    suite = _suite(root, f"boot-{run.label.replace('/', '-')}", total)
    suite.set("hostname", run.accelerator)
    classname = f"boot.{run.label.replace('/', '.')}"
    boot_case = ET.SubElement(suite, "testcase", classname=classname, name="boot to SSH",
                              time=f"{run.boot_seconds or 0.0:.3f}")
    if run.booted:
        out = ET.SubElement(boot_case, "system-out")
        out.text = f"accelerator {run.accelerator}; root disk on {run.disk_bus}; console {run.console_log}"
    else:
        error = ET.SubElement(boot_case, "error", message=(run.error or "did not boot").splitlines()[0],
                              type="BootError")
        error.text = run.error or ""
    for result in run.results:
        _case(suite, classname, result)
    _finish(suite)


def junit_xml(report: BootReport) -> bytes:
    """The report as JUnit XML (the flavour Jenkins, GitLab and GitHub test reporters read)."""
    root = ET.Element("testsuites", name=f"assembler boot {Path(report.disk).name}")
    if report.hygiene:
        suite = _suite(root, "hygiene", report.hygiene_seconds)
        for result in report.hygiene:
            _case(suite, "hygiene", result)
        _finish(suite)
    for run in report.runs:
        _boot_suite(root, run)
    suites = root.findall("testsuite")
    for attr in ("tests", "failures", "errors"):
        root.set(attr, str(sum(int(s.get(attr, "0")) for s in suites)))
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"


def write_junit(report: BootReport, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(junit_xml(report))
        tmp.chmod(0o644)  # mkstemp makes 0600; CI reporters often run as another user
    return path
