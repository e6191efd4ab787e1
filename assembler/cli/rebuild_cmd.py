"""`assembler rebuild BOM`: recreate an image from the build inputs its bill of materials carries."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from assembler.cli import complete


def rebuild(
    source: Path = typer.Argument(..., help="IMAGE.spdx.json, an out/IMAGE directory or a disk image"),
    output: Path | None = typer.Option(None, "--output", "-o", help="output directory (default out/IMAGE-rebuild)"),
    fmt: list[str] = typer.Option(None, "--format", "-f", autocompletion=complete.formats,
        help="output format (repeatable); default from image.yaml"),
    cache: Path | None = typer.Option(None, "--cache-dir", help="cache (default ~/.cache/assembler)"),
    use_cache: bool = typer.Option(False, "--cache/--no-cache",
                                   help="reuse cached phases and engine layers (default: build everything anew)"),
    no_boot_test: bool = typer.Option(False, "--no-boot-test", help="skip the QEMU boot test phase"),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="fail unless the rebuilt rootfs (and disk) match the BOM"),
    as_json: bool = typer.Option(False, "--json", help="print the rebuild report as JSON on stdout"),
    bundle: Path | None = typer.Option(None, "--bundle", help="take every locked file from this bundle"),
    offline: bool = typer.Option(False, "--offline", help="fetch nothing: the package store and the bundle only"),
) -> None:
    """Rebuild the image a BOM describes (context, base recipe, args, epoch, pins) and verify it."""
    from assembler.rebuild import rebuild as run_rebuild

    report = run_rebuild(source, output=output, cache=cache, boot_test=not no_boot_test, verify=verify,
                         nocache=not use_cache, formats=fmt or None, bundle=bundle, offline=offline)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
