"""`assembler scan TARGET --db OSV`: the image's Debian packages against vulnerability advisories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from assembler.cli import complete

if TYPE_CHECKING:
    from assembler.scan import ScanReport

FAIL_EXIT = 3  # findings at or above --fail-on (1 is an error, 2 a usage error)


def scan(
    target: str = typer.Argument(..., autocompletion=complete.images,
                                 help="out/IMAGE, a disk (raw/qcow2/vmdk/vhd), an SPDX file, an image archive or "
                                      "an engine image reference"),
    db: str = typer.Option(..., "--db", help="OSV advisories: a JSON file, a directory of them, a zip, or an "
                                             "http(s) URL (fetched into the cache, reused when unchanged or "
                                             "unreachable), e.g. osv.dev's Debian/all.zip"),
    fail_on: str | None = typer.Option(None, "--fail-on", help="exit 3 when a finding is at least this severe: "
                                                               "negligible, low, medium, high, critical"),
    as_json: bool = typer.Option(False, "--json", help="print the findings as JSON on stdout"),
    cache: Path | None = typer.Option(None, "--cache-dir", help="cache for a --db URL (default ~/.cache/assembler)"),
) -> None:
    """Match every Debian package of TARGET against OSV advisories: affected versions, fixes, severities."""
    from assembler import scan as scan_mod
    from assembler.config import cache_dir
    from assembler.errors import ConfigError
    from assembler.inspect import inspect_target
    from assembler.scan_db import open_database
    from assembler.severity import SEVERITIES

    threshold = None
    if fail_on is not None:
        if fail_on not in SEVERITIES[1:]:
            raise ConfigError(f"invalid --fail-on {fail_on!r}", resolution=f"use one of: {', '.join(SEVERITIES[1:])}")
        threshold = next(s for s in SEVERITIES if s == fail_on)
    database = open_database(db, cache_dir(cache))
    advisories = database.load()
    report = inspect_target(target)
    result = scan_mod.scan_packages(report.get("packages", []), (report.get("os") or {}).get("VERSION_ID"),
                                    advisories, database.provenance())
    failing = result.failing(threshold)
    if as_json:
        typer.echo(json.dumps({"target": target, **result.as_dict(threshold)}, indent=2))
    else:
        render(result, target, Console(highlight=False, soft_wrap=True))
        if threshold:
            typer.echo(f"{len(failing)} finding(s) at or above {threshold}")
    if failing:
        raise typer.Exit(FAIL_EXIT)


def render(result: ScanReport, target: str, out: Console) -> None:
    db = result.db or {}
    fetched = f", fetched {db['fetched']}" if db.get("fetched") else ""
    table = Table("severity", "package", "installed", "advisory", "fixed in", "summary",
                  title=f"{target}: {len(result.findings)} finding(s) in {result.packages} packages "
                        f"(Debian {result.release or '?'}, {result.advisories} advisories)"
                        + (f"\nadvisories: {db.get('source')} (sha256 {db.get('sha256')}{fetched})" if db else ""))
    for f in result.findings:
        table.add_row(f.severity, f.package, f.version, " ".join([f.advisory, *f.aliases[:2]]),
                      f.fixed or "not yet", f.summary[:60])
    out.print(table)
