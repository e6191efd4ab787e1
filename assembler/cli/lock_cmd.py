"""`assembler lock IMAGE [--update]`: write the image's lock (every .deb and signed index, by sha256)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from assembler.cli import complete
from assembler.errors import ConfigError

if TYPE_CHECKING:
    from assembler.packages.lockfile import Change


def lock(
    image: str = typer.Argument(..., autocompletion=complete.images,
        help="name under Containerfiles/ or a directory with a Containerfile"),
    update: bool = typer.Option(False, "--update", help="re-resolve against today's archive and show what changed"),
    cache: Path | None = typer.Option(None, "--cache-dir", help="cache (default ~/.cache/assembler)"),
    as_json: bool = typer.Option(False, "--json", help="print the lock's path, package count and changes as JSON"),
    arch: str = typer.Option("amd64", "--arch", help="amd64 (image.lock.json) or arm64 (image.lock.arm64.json)"),
) -> None:
    """Resolve IMAGE's base and Containerfile packages and write IMAGE_DIR/image.lock.json.

    Without --update an existing lock whose files can all still be served is kept as it is.
    """
    from assembler.cli.build_cmd import architecture
    from assembler.config import cache_dir, resolve_image
    from assembler.log import console
    from assembler.packages import lockfile, locking
    from assembler.packages.store import PackageStore
    from assembler.phases.rootfs import RootfsPhase
    from assembler.pipeline import BuildRun
    from assembler.rootfs.ancestry import base_of
    from assembler.store import Store

    spec = resolve_image(image).for_arch(architecture(arch))
    if base_of(spec) is None:
        raise ConfigError(f"{spec.name} has no `base:` recipe: its packages come from its own base image",
                          resolution="pin its apt sources to a dated snapshot in the Containerfile instead")
    root = cache_dir(cache)
    path = spec.context / lockfile.lock_name(spec.arch)
    committed = locking.read_image_lock(spec.context, spec.arch)
    if committed is not None and not update:
        check = locking.check(committed, PackageStore(root),
                              locking.sources_for(committed, snapshots=spec.config.snapshots))
        if check.complete:
            console.print(f"{path}: current ({len(committed.packages)} packages, every file available)",
                          soft_wrap=True)
            _report(as_json, path, "current", len(committed.packages), [])
            return
    ctx = BuildRun(spec=spec, store=Store(root), output_dir=Path("/nonexistent"), formats=[],
                       boot_test=False, update_lock=update)
    with ctx.store.scratch("lock") as tmp:
        RootfsPhase(ctx).execute(tmp)
        resolved = lockfile.read_lock(tmp / lockfile.LOCK_FILE)
    lockfile.write_lock(path, resolved)
    if committed is None:
        console.print(f"{path}: written ({len(resolved.packages)} packages, {len(resolved.indexes)} index files)",
                      soft_wrap=True)
        _report(as_json, path, "written", len(resolved.packages), [])
        return
    moved = lockfile.changes(committed, resolved)
    for change in moved:
        console.print(f"  {change}", highlight=False)
    console.print(f"{path}: {len(resolved.packages)} packages, {len(moved)} changed", soft_wrap=True)
    _report(as_json, path, "updated" if moved else "unchanged", len(resolved.packages), moved)


def _report(as_json: bool, path: Path, state: str, packages: int, moved: list[Change]) -> None:
    if as_json:
        typer.echo(json.dumps({"lock": str(path), "state": state, "packages": packages,
                               "changes": [{"package": c.ident, "old": c.old, "new": c.new} for c in moved]},
                              indent=2))
