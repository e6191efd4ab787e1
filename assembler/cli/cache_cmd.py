"""`assembler cache ls|verify|gc`: see, check and bound the cache (phase entries, package store, bases)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from assembler.config import cache_dir
from assembler.errors import AssemblerError, ConfigError
from assembler.store import Store

app = typer.Typer(help="Inspect, verify and bound the cache.", no_args_is_help=True)

CACHE_OPTION = typer.Option(None, "--cache-dir", help="cache (default ~/.cache/assembler)")
JSON_OPTION = typer.Option(False, "--json", help="print JSON on stdout")


def _store(cache: Path | None) -> Store:
    return Store(cache_dir(cache))


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _when(epoch: int) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(epoch)) if epoch else "-"


@app.command("ls")
def ls(cache: Path | None = CACHE_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Every phase entry (phase, image, size, created, last used), the package store and the bases."""
    from rich.table import Table

    from assembler.cache import inventory
    from assembler.log import console

    inv = inventory(_store(cache))
    if as_json:
        typer.echo(json.dumps(inv.as_dict(), indent=2))
        return
    table = Table(title=f"cache {_store(cache).root}")
    for column in ("key", "phase", "image", "size", "created", "last used"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for entry in inv.entries:
        table.add_row(entry.key[:12], entry.phase, entry.image, _size(entry.bytes), _when(entry.created),
                      _when(entry.last_used))
    console.print(table)
    console.print(f"packages: {inv.package_files} files, {_size(inv.package_bytes)}; bases: "
                  f"{_size(inv.base_bytes)}; layer indexes: {_size(inv.layer_index_bytes)}; "
                  f"tmp: {_size(inv.tmp_bytes)}; total {_size(inv.total)}",
                  highlight=False)


@app.command("verify")
def verify(cache: Path | None = CACHE_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Check every entry against its recorded sizes and digests and every package against its name."""
    from assembler.cache import verify as run_verify
    from assembler.log import console

    entries, hashed, problems = run_verify(_store(cache))
    if as_json:  # printed before the verdict, so a damaged cache still gives its list (and exit status 1)
        typer.echo(json.dumps({"entries": entries, "files_hashed": hashed,
                               "problems": [{"what": p.what, "why": p.why} for p in problems]}, indent=2))
    for problem in problems:
        console.print(f"  [red]{problem.what}[/]: {problem.why}", highlight=False)
    if problems:
        raise AssemblerError(f"{len(problems)} damaged item(s) in the cache",
                             resolution="run `assembler cache gc --older-than 0s` to drop every entry, or just "
                                        "build: a build discards a damaged entry or package and makes it again")
    console.print(f"cache intact: {entries} entries, {hashed} files checked by sha256")


@app.command("gc")
def gc(cache: Path | None = CACHE_OPTION,
       keep_bytes: str | None = typer.Option(None, "--keep-bytes", help="remove least recently used entries "
                                             "until the cache is at most this size, e.g. 20G"),
       older_than: str | None = typer.Option(None, "--older-than", help="remove entries unused for this "
                                             "long: 30d, 12h, 90m, 2w"),
       dry_run: bool = typer.Option(False, "--dry-run", help="say what would be removed"),
       as_json: bool = JSON_OPTION) -> None:
    """Remove least recently used phase entries; never one a running build uses or writes."""
    from assembler.cache import gc as run_gc
    from assembler.cache import inventory, parse_duration
    from assembler.log import console
    from assembler.sizes import parse_size

    if keep_bytes is None and older_than is None:
        raise ConfigError("gc needs a bound", resolution="pass --keep-bytes SIZE and/or --older-than AGE")
    try:
        age = parse_duration(older_than) if older_than is not None else None
    except ValueError:
        raise ConfigError(f"invalid age: {older_than!r}", resolution="use a number and s, m, h, d or w, "
                          "e.g. 30d") from None
    limit = (0 if keep_bytes.strip() == "0" else parse_size(keep_bytes)) if keep_bytes is not None else None
    store = _store(cache)
    removed, busy = run_gc(store, keep_bytes=limit, older_than=age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        console.print(f"  {verb} {item.entry.key[:12]} {item.entry.phase} {item.entry.image} "
                      f"({_size(item.entry.bytes)}, {item.reason})", highlight=False)
    for entry in busy:
        console.print(f"  kept {entry.key[:12]} {entry.phase}: in use by a running build", highlight=False)
    left = inventory(store).total
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run, "removed": [{**r.entry.as_dict(), "reason": r.reason}
                                                                for r in removed],
                               "in_use": [e.as_dict() for e in busy], "total_bytes": left}, indent=2))
    console.print(f"{verb} {len(removed)} entries ({_size(sum(r.entry.bytes for r in removed))}); "
                  f"cache now {_size(left)}", highlight=False)
    if limit is not None and left > limit and not dry_run:
        console.print(f"[yellow]still above {keep_bytes}[/]: the package store and bases are not collected "
                      "(delete packages/ or base/ to drop them; the next build fetches what it needs)")
