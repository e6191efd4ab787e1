"""`assembler list`: the images under Containerfiles/."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from assembler.config import list_images, resolve_image
from assembler.log import console


def list_images_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON on stdout")) -> None:
    """List the images this checkout can build."""
    rows = []
    for name in list_images():
        spec = resolve_image(name)
        rows.append({"name": name, "base": spec.config.base, "formats": spec.config.formats,
                     "description": spec.config.description})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("image", "base", "formats", "description")
    for row in rows:
        table.add_row(row["name"], row["base"] or "-", ",".join(row["formats"]), row["description"])
    console.print(table)
