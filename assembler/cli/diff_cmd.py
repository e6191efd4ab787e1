"""`assembler diff A B`: packages, files and disk bytes that differ, by the Containerfile step that did it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from assembler.diff import diff as run_diff

MARK = {"added": "[green]+[/]", "removed": "[red]-[/]", "changed": "[yellow]~[/]"}


def diff(
    a: str = typer.Argument(..., help="out/IMAGE, disk, image archive, rootfs tar, SPDX file or image ref"),
    b: str = typer.Argument(..., help="the same kinds as A"),
    as_json: bool = typer.Option(False, "--json", help="print the full comparison as JSON on stdout"),
    limit: int = typer.Option(50, "--limit", help="files shown per step (0: all)"),
    exit_code: bool = typer.Option(False, "--exit-code", help="exit 1 when A and B differ (like git diff)"),
    cache: Path | None = typer.Option(None, "--cache-dir", help="cache holding the builds' layers.json"),
) -> None:
    """Compare two builds layer by layer: packages, files (size, mode), download pins and disk bytes."""
    report = run_diff(a, b, cache=cache)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        render(report, Console(highlight=False, soft_wrap=True), limit=limit)
    if exit_code and not report["identical"]:
        raise typer.Exit(1)


def render(report: dict[str, Any], out: Console, *, limit: int = 50) -> None:
    out.print(f"A: {escape(report['a']['target'])} ({report['a']['kind']})")
    out.print(f"B: {escape(report['b']['target'])} ({report['b']['kind']})")
    if report["identical"]:
        out.print("[bold green]no difference[/] in " + ", ".join(report["compared"]))
    for row in report.get("layers", []):
        side = row["b"] or row["a"]
        out.print(f"  layer {side['index']:>2} {row['status']:<15} {escape(_short(side['step']))}")
    _packages(report.get("packages") or {}, out)
    _downloads(report.get("downloads") or {}, out)
    _files(report.get("files") or [], report.get("steps") or [], out, limit)
    if "disk" in report:
        disk = report["disk"]
        out.print("[bold]disk[/]: " + ("bytes identical" if disk["identical"] else "bytes differ"))
        for region in disk["regions"]:
            if not region["identical"]:
                out.print(f"  {region['region']}: {region['reason']}")
    for note in report.get("not_compared", []):
        out.print(f"[dim]not compared: {note}[/]")


def _short(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _packages(packages: dict[str, list[dict[str, Any]]], out: Console) -> None:
    if not any(packages.values()):
        return
    out.print("[bold]packages[/]: " + ", ".join(f"{len(v)} {k}" for k, v in packages.items() if v))
    for p in packages.get("added", []):
        out.print(f"  {MARK['added']} {p['name']} {p['version']} ({len(p.get('files', []))} files)  "
                  f"[dim]{escape(_short(p.get('step') or ''))}[/]")
    for p in packages.get("removed", []):
        out.print(f"  {MARK['removed']} {p['name']} {p['version']}  [dim]{escape(_short(p.get('step') or ''))}[/]")
    for kind in ("upgraded", "downgraded"):
        for p in packages.get(kind, []):
            out.print(f"  {MARK['changed']} {p['name']} {p['from']} -> {p['to']} ({kind})  "
                      f"[dim]{escape(_short(p.get('step') or ''))}[/]")


def _downloads(downloads: dict[str, list[dict[str, Any]]], out: Console) -> None:
    if not any(downloads.values()):
        return
    out.print("[bold]downloads[/]")
    for d in downloads.get("added", []):
        out.print(f"  {MARK['added']} {escape(d['name'])} {escape(d['url'])}")
    for d in downloads.get("removed", []):
        out.print(f"  {MARK['removed']} {escape(d['name'])} {escape(d['url'])}")
    for d in downloads.get("changed", []):
        # Only what changed: a new checksum (other bytes) and/or a new URL (another mirror or release).
        what = [f"{field} {escape(d['from_' + field])} -> {escape(d['to_' + field])}" for field in d["fields"]]
        out.print(f"  {MARK['changed']} {escape(d['name'])} " + ", ".join(what))


def _files(files: list[dict[str, Any]], steps: list[dict[str, Any]], out: Console, limit: int) -> None:
    if not files:
        return
    out.print(f"[bold]files[/]: {sum(1 for f in files if f['change'] == 'added')} added, "
              f"{sum(1 for f in files if f['change'] == 'removed')} removed, "
              f"{sum(1 for f in files if f['change'] == 'changed')} changed")
    for group in steps:
        where = "A" if group["side"] == "a" else "B"
        out.print(f" {where} layer {group['layer']}: [cyan]{escape(_short(group['step'] or '(unknown)'))}[/]")
        mine = [f for f in files if (f["side"], f["layer"]) == (group["side"], group["layer"])]
        for change in mine[:limit or None]:
            out.print(f"   {MARK[change['change']]} {escape(_describe(change))}")
        if limit and len(mine) > limit:
            out.print(f"   … {len(mine) - limit} more (--limit 0 shows all, --json lists them)")


def _describe(change: dict[str, Any]) -> str:
    text = f"/{change['path']}  {change['type']} {change['mode']} {change['size']} B"
    if change["change"] == "changed":
        old = change["old"]
        parts = [f"{old[k]} -> {change[k]}" for k in ("type", "mode", "size", "uid", "gid") if old[k] != change[k]]
        if change.get("content"):
            parts.append("content")
        text += "  (" + ", ".join(parts) + ")"
    if change.get("packages"):
        text += "  [" + ",".join(change["packages"][:3]) + "]"
    return text
