"""`assembler bundle IMAGE -o FILE`: every locked input of an image in one OCI image layout."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from assembler.errors import ConfigError


def bundle(
    source: str = typer.Argument(..., help="an image (name or directory: its image.lock.json) or a built out/IMAGE "
                                           "directory (its effective lock and BOM inputs)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="the bundle file to write (an OCI layout tar)"),
    push: str | None = typer.Option(None, "--push", help="push it as an OCI artifact to http(s)://HOST[:PORT]/REPO "
                                    "(the repository builds then fetch locked files from: `package_registry:` in "
                                    "the mirror map)"),
    cache: Path | None = typer.Option(None, "--cache-dir", help="cache (default ~/.cache/assembler)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Write the lock, the build inputs, every locked .deb and index file and every download into FILE.

    Build from it anywhere, with no mirror: `assembler build IMAGE --bundle FILE --offline`.
    """
    from assembler import bom, inputs
    from assembler.config import cache_dir, resolve_image
    from assembler.log import console
    from assembler.packages import locking
    from assembler.packages.bundle import collect, write
    from assembler.packages.bundle import push as push_layout
    from assembler.packages.lockfile import read_lock
    from assembler.rootfs.downloads import DOWNLOADS_FILE, Download, load_downloads

    if output is None and push is None:
        raise ConfigError("nothing to write", resolution="give --output FILE, --push REGISTRY_URL or both")
    root = cache_dir(cache)
    path = Path(source)
    if path.is_dir() and (path / "manifest.json").is_file():  # a finished build: what it really installed
        manifest = json.loads((path / "manifest.json").read_text())
        name = str(manifest.get("image", ""))
        lock_file = path / f"{name}.lock.json"
        if not lock_file.is_file():
            raise ConfigError(f"{path} holds no {lock_file.name}", resolution="build the image with this assembler")
        lock = read_lock(lock_file)
        spdx = path / f"{name}.spdx.json"
        recorded = bom.build_inputs_of(bom.load_spdx(spdx)) if spdx.is_file() else None
        recorded = recorded or {}
        downloads = [Download.model_validate(d) for d in recorded.get("downloads", [])]
    else:
        spec = resolve_image(source)
        found = locking.read_image_lock(spec.context)
        if found is None:
            raise ConfigError(f"{spec.name} has no image.lock.json", resolution=f"run `assembler lock {source}`")
        lock = found
        recorded = inputs.build_inputs(spec)
        downloads = load_downloads(spec.context / DOWNLOADS_FILE, spec.arch)
    layout = collect(lock, recorded, downloads, root, locking.sources_for(lock))
    summary = layout.summary()
    if output is not None:
        write(layout, output)
        summary["path"] = str(output)
    if push is not None:
        summary["pushed"] = push_layout(layout, push)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        where = " and ".join(str(x) for x in (output, summary.get("pushed")) if x)
        # One line whatever the width: a path broken over two lines cannot be copied (or matched).
        console.print(f"{where}: {summary['blobs']} blobs, {summary['bytes'] / 2**20:.1f} MiB, "
                      f"manifest {summary['manifest']}", soft_wrap=True)
