"""Boot test results: the models, a readable summary, and the exit status."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.table import Table

from assembler.boot.checks import CheckResult
from assembler.log import console as default_console


class BootResult(BaseModel):
    """One boot of one firmware: did it come up, how long it took, and every check's outcome."""

    model_config = ConfigDict(frozen=True)

    firmware: str
    accelerator: str
    booted: bool
    disk_bus: str = "virtio"
    boot_seconds: float | None = None
    checks_seconds: float | None = None
    # Seconds in each boot stage read from the console: firmware, kernel, userspace (up to SSH).
    stages: dict[str, float] = {}
    results: list[CheckResult] = []
    console_log: str = ""
    # With a TPM: PCR values (sha256 bank) the guest read after boot, and the file its event log was saved to.
    pcrs: dict[str, str] = {}
    event_log: str | None = None
    error: str | None = None
    workdir: str | None = None

    @property
    def passed(self) -> bool:
        return self.booted and self.error is None and all(r.passed for r in self.results)

    @property
    def label(self) -> str:
        """`bios`, or `bios/nvme` when the root disk was not on the default virtio-blk."""
        return self.firmware if self.disk_bus == "virtio" else f"{self.firmware}/{self.disk_bus}"

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]


class BootReport(BaseModel):
    """A whole `assembler boot`: hygiene of the artefact once, then one BootResult per firmware."""

    model_config = ConfigDict(frozen=True)

    disk: str
    format: str
    hygiene: list[CheckResult] = []
    hygiene_seconds: float | None = None
    runs: list[BootResult] = []
    junit: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(r.passed for r in self.runs) and all(r.passed for r in self.hygiene)

    def failure_summary(self) -> str:
        """One line per failure, for error details and CI logs."""
        lines = [f"hygiene {r.name}: {r.message}" for r in self.hygiene if not r.passed]
        for run in self.runs:
            if run.error:
                lines.append(f"{run.label}: {run.error}")
            lines += [f"{run.label} {r.name}: {r.message}" for r in run.failures]
        return "\n".join(lines) or "all checks passed"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def exit_status(report: BootReport) -> int:
    """0 only if every firmware booted and every check (hygiene included) passed."""
    return 0 if report.passed else 1


def _seconds(value: float | None) -> str:
    return f"{value:.1f}s" if value is not None else "-"


def summary_table(report: BootReport) -> Table:
    table = Table(title=f"boot test of {report.disk} ({report.format})", show_lines=False)
    for column in ("suite", "check", "result", "detail"):
        table.add_column(column, overflow="fold")
    for r in report.hygiene:
        table.add_row("hygiene", r.name, _mark(r.passed), r.message)
    for run in report.runs:
        suite = f"{run.label} ({run.accelerator})"
        spans = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in run.stages.items())
        boot_detail = (f"SSH up after {_seconds(run.boot_seconds)}{f' ({spans})' if spans else ''}, "
                       f"checks {_seconds(run.checks_seconds)}"
                       if run.booted else (run.error or "did not boot").splitlines()[0])
        table.add_row(suite, "boot", _mark(run.booted), boot_detail)
        for r in run.results:
            table.add_row(suite, r.name, _mark(r.passed), r.message)
    return table


def _mark(passed: bool) -> str:
    return "[green]pass[/]" if passed else "[bold red]FAIL[/]"


def print_summary(report: BootReport, console: Console | None = None) -> None:
    """The rich table, then the verdict and where the console logs and JUnit file are."""
    out = console or default_console
    out.print(summary_table(report))
    for run in report.runs:
        out.print(f"{run.label}: console log {run.console_log}", soft_wrap=True)
        if run.workdir:
            out.print(f"{run.label}: kept work directory {run.workdir}", soft_wrap=True)
    if report.junit:
        out.print(f"JUnit report: {report.junit}", soft_wrap=True)
    verdict = "[green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    out.print(f"boot test {verdict}")
