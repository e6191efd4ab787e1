"""`assembler convert DISK --format F`: any disk the tool made, or a raw/qcow2 a user brings."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from assembler.cli import complete
from assembler.errors import ConfigError
from assembler.log import console


def convert(
    disk: Path = typer.Argument(..., help="source disk (raw, qcow2, vmdk, vhd)"),
    fmt: list[str] = typer.Option(..., "--format", "-f", autocompletion=complete.formats,
        help="target format (repeatable)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="output path (one format) or directory"),
    name: str | None = typer.Option(None, "--name", help="image name used in output names and OVF"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON on stdout"),
) -> None:
    """Convert DISK into one or more formats."""
    from assembler import formats

    if not disk.is_file():
        raise ConfigError(f"no such disk: {disk}", resolution="pass the path of a raw, qcow2, vmdk or vhd file")
    targets = formats.validate_format_names(fmt)
    image_name = name or disk.name.split(".")[0]
    if output is not None and len(targets) > 1 and not output.is_dir():
        raise ConfigError("--output must be a directory when converting to several formats",
                          resolution="pass an existing directory, or one --format")
    results = []
    for target in targets:
        if output is None or output.is_dir():
            dest = (output or disk.parent) / formats.output_name(image_name, target)
        else:
            dest = output
        if dest.resolve() == disk.resolve():
            raise ConfigError(f"output would overwrite the source: {dest}", resolution="pass --output")
        result = formats.convert(disk, target, dest, image_name=image_name)
        console.print(f"  [cyan]{target:<9}[/] {result.path}  sha256 {result.sha256[:16]}")
        results.append({"format": target, "path": str(result.path), "sha256": result.sha256,
                        "virtual_size": result.virtual_size, "file_size": result.file_size})
    if as_json:
        typer.echo(json.dumps(results, indent=2))
