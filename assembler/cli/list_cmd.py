"""`assembler list`: the images under Containerfiles/."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from assembler.config import list_images, resolve_image
from assembler.log import console


def list_images_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON on stdout")) -> None:
    """List the images this checkout can build."""
    specs = [resolve_image(name) for name in list_images()]
    if as_json:
        rows = [{"name": s.name, "base": s.config.base, "formats": s.config.formats,
                 "description": s.config.description} for s in specs]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("image", "base", "formats", "description")
    for spec in specs:
        cfg = spec.config
        table.add_row(spec.name, cfg.base or "-", ",".join(cfg.formats), cfg.description)
    console.print(table)
