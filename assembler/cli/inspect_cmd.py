"""`assembler inspect TARGET`: versions, packages, layers, partitions and digests of a built artefact."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from assembler.inspect import inspect_target


def inspect(
    target: str = typer.Argument(..., help="out/IMAGE, a disk (raw/qcow2/vmdk/vhd), an image archive or tar, "
                                           "an SPDX file, or an engine image reference"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    packages: bool = typer.Option(True, "--packages/--no-packages", help="list every package"),
) -> None:
    """Show what TARGET holds: release and versions, digests, layers, partition layout, packages."""
    report = inspect_target(target)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    render(report, Console(highlight=False, soft_wrap=True), packages=packages)


def render(report: dict[str, Any], out: Console, *, packages: bool = True) -> None:
    os_name = (report.get("os") or {}).get("PRETTY_NAME", "")
    out.print(f"[bold]{report.get('image') or report['target']}[/] ({report['kind']}) {os_name}".rstrip())
    if report.get("source_date_epoch") is not None:
        out.print(f"  SOURCE_DATE_EPOCH {report['source_date_epoch']}")
    if report.get("kernel"):
        out.print(f"  kernel {report['kernel']}")
    if report.get("bom"):
        out.print(f"  BOM {report['bom'].get('path', '')} ({report['bom']['spdx_version']}, "
                  f"sha256 {report['bom']['sha256'][:16]}…)")
    for key, value in sorted((report.get("digests") or {}).items()):
        if value:
            out.print(f"  {key:<14} {value}")
    _table(out, "layers", ["#", "digest", "step"],
           [[str(x["index"]), str(x.get("digest", ""))[:19], _step(x.get("step", ""))]
            for x in report.get("layers", [])])
    _table(out, "partitions", ["#", "name", "start", "size", "fs", "uuid"],
           [[str(p["number"]), str(p.get("name") or ""), str(p["start"]), _size(p["size"]),
             str(p.get("filesystem") or "-"), str(p.get("uuid") or "-")] for p in report.get("partitions", [])])
    _table(out, "downloads", ["name", "version", "url", "sha256"],
           [[d.get("name", ""), d.get("version", ""), d["url"], d["sha256"][:16] + "…"]
            for d in report.get("downloads", [])])
    _table(out, "tools", ["tool", "version"], [[k, v] for k, v in sorted((report.get("tools") or {}).items())])
    pkgs = report.get("packages", [])
    if packages:
        _table(out, f"packages ({len(pkgs)})", ["name", "version", "arch", "source"],
               [[p["name"], p["version"], p.get("architecture", ""),
                 p.get("source", "") if p.get("source") != p["name"] else ""] for p in pkgs])
    else:
        out.print(f"packages: {len(pkgs)}")


def _step(step: str) -> str:
    from assembler.rootfs.layers import step_label

    label = step_label(step)
    return label if len(label) <= 90 else label[:89] + "…"


def _size(size: int) -> str:
    return f"{size / 1024**2:.0f} MiB" if size >= 1024**2 else f"{size / 1024:.0f} KiB"


def _table(out: Console, title: str, columns: list[str], rows: list[list[str]]) -> None:
    if not rows:
        return
    table = Table(*columns, title=title, title_justify="left", box=None, pad_edge=False)
    for row in rows:
        table.add_row(*row)
    out.print(table)
