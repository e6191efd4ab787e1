"""`assembler scan TARGET --db OSV`: the image's Debian packages against vulnerability advisories."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from assembler.cli import complete

FAIL_EXIT = 3  # findings at or above --fail-on (1 is an error, 2 a usage error)


def scan(
    target: str = typer.Argument(..., autocompletion=complete.images,
                                 help="out/IMAGE, a disk (raw/qcow2/vmdk/vhd), an SPDX file, an image archive or "
                                      "an engine image reference"),
    db: Path = typer.Option(..., "--db", help="OSV advisories: a JSON file, a directory of them, or a zip such as "
                                              "osv.dev's Debian/all.zip"),
    fail_on: str | None = typer.Option(None, "--fail-on", help="exit 3 when a finding is at least this severe: "
                                                               "negligible, low, medium, high, critical"),
    as_json: bool = typer.Option(False, "--json", help="print the findings as JSON on stdout"),
) -> None:
    """Match every Debian package of TARGET against OSV advisories: affected versions, fixes, severities."""
    from assembler import scan as scan_mod
    from assembler.errors import ConfigError
    from assembler.inspect import inspect_target

    threshold = None
    if fail_on is not None:
        if fail_on not in scan_mod.SEVERITIES[1:]:
            raise ConfigError(f"invalid --fail-on {fail_on!r}",
                              resolution=f"use one of: {', '.join(scan_mod.SEVERITIES[1:])}")
        threshold = next(s for s in scan_mod.SEVERITIES if s == fail_on)
    advisories = scan_mod.load_advisories(db)
    report = inspect_target(target)
    release = (report.get("os") or {}).get("VERSION_ID")
    installed = scan_mod.installed_from(report.get("packages", []))
    findings = scan_mod.match(installed, advisories, release)
    failing = scan_mod.at_least(findings, threshold) if threshold else []
    if as_json:
        typer.echo(json.dumps({"target": target, "release": release, "packages": len(installed),
                               "advisories": len(advisories), "findings": scan_mod.as_json(findings),
                               "fail_on": threshold, "failed": bool(failing)}, indent=2))
    else:
        out = Console(highlight=False, soft_wrap=True, stderr=False)
        table = Table("severity", "package", "installed", "advisory", "fixed in", "summary",
                      title=f"{target}: {len(findings)} finding(s) in {len(installed)} packages "
                            f"(Debian {release or '?'}, {len(advisories)} advisories)")
        for f in findings:
            table.add_row(f.severity, f.package, f.version, " ".join([f.advisory, *f.aliases[:2]]),
                          f.fixed or "not yet", f.summary[:60])
        out.print(table)
        if threshold:
            out.print(f"{len(failing)} finding(s) at or above {threshold}")
    if failing:
        raise typer.Exit(FAIL_EXIT)
