"""`assembler list`: the images under Containerfiles/, and the Kubernetes node images as an OS x minor matrix."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from assembler.config import ImageSpec, list_images, resolve_image
from assembler.log import console


def kubernetes_minor(spec: ImageSpec) -> str | None:
    """A node image's Kubernetes minor, from its properties (the twins name the minor, the others the version)."""
    props = spec.config.properties
    if "kubernetes_minor" in props:
        return props["kubernetes_minor"]
    version = props.get("kubernetes_version")
    return ".".join(version.split(".")[:2]) if version else None


def node_matrix(specs: list[ImageSpec]) -> dict[str, dict[str, str]]:
    """OS -> Kubernetes minor -> image name, for the images that declare both."""
    matrix: dict[str, dict[str, str]] = {}
    for spec in specs:
        minor, os_name = kubernetes_minor(spec), spec.config.properties.get("os")
        if minor and os_name:
            matrix.setdefault(os_name, {})[minor] = spec.name
    return matrix


def list_images_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON on stdout")) -> None:
    """List the images this checkout can build."""
    specs = [resolve_image(name) for name in list_images()]
    if as_json:
        rows = [{"name": s.name, "base": s.config.base, "formats": s.config.formats,
                 "description": s.config.description, "os": s.config.properties.get("os"),
                 "kubernetes_minor": kubernetes_minor(s)} for s in specs]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("image", "base", "formats", "description")
    for spec in specs:
        cfg = spec.config
        table.add_row(spec.name, cfg.base or "-", ",".join(cfg.formats), cfg.description)
    console.print(table)
    matrix = node_matrix(specs)
    if matrix:
        minors = sorted({m for row in matrix.values() for m in row}, key=lambda m: tuple(map(int, m.split("."))))
        systems = sorted(matrix)
        grid = Table("Kubernetes", *systems, title="Kubernetes node images (Kubernetes minor x OS)")
        for minor in minors:
            grid.add_row(minor, *(matrix[os_name].get(minor, "-") for os_name in systems))
        console.print(grid)
