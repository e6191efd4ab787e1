"""rootfs: build the Containerfile in the engine and flatten the image into a deterministic tar."""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.markup import escape

from assembler import bootstrap, engine, flatten, layers
from assembler import context as build_context
from assembler.config import cache_dir, rootfs_dir
from assembler.fsutil import sha256_tree
from assembler.log import console, log
from assembler.pipeline import Phase

ROOTFS_TAR = "rootfs.tar"
LAYERS_INDEX = "layers.json"  # per-layer file index: what `assembler diff` attributes changes with
# Files of the build context that do not reach the engine's build and so must not bust the cache.
NOT_BUILD_INPUTS = ("image.yaml", "checks.yaml")


def context_hash(context: Path) -> str:
    """Hash of the build context minus the files that only configure later phases."""
    return sha256_tree(context, exclude=NOT_BUILD_INPUTS)


def _show_step(line: str) -> None:
    # The engine streams every line of every RUN; the step headers are enough to follow progress.
    if line.startswith("Step "):
        console.print(f"    [dim]{escape(line.strip()[:150])}[/]", highlight=False)
    else:
        log.debug("%s", line.rstrip())


def _write_layer_index(archive: Path, dest: Path) -> None:
    layers.index_archive(archive, dest)  # returns nothing: the index is read back from dest when needed


def flatten_and_index(archive: Path, out: Path, source_date_epoch: int) -> flatten.FlattenResult:
    """The rootfs tar and the per-layer index of a saved image, side by side.

    Both only read the archive and both are Python-bound (tar parsing holds the GIL), so the index is
    written by a forked process on the second core while this one flattens. Forked, not spawned: spawn
    re-imports the caller's __main__, which fails for `python -c` and notebooks; the child touches no lock
    the parent's threads (the progress spinner) may hold, only the archive and its own output file.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        indexing = pool.submit(_write_layer_index, archive, out / LAYERS_INDEX)
        result = flatten.flatten(archive, out / ROOTFS_TAR, source_date_epoch=source_date_epoch)
        indexing.result()
    return result


class RootfsPhase(Phase):
    name = "rootfs"
    kind = "rootfs"
    version = 1

    def _recipe(self) -> bootstrap.BaseRecipe | None:
        base = self.ctx.spec.config.base
        return bootstrap.load_recipe(rootfs_dir() / base) if base else None

    def material(self) -> dict[str, Any]:
        recipe = self._recipe()
        cfg = self.ctx.spec.config
        return {
            "context": context_hash(self.ctx.spec.context),
            "build_args": cfg.build_args,
            "source_date_epoch": cfg.source_date_epoch,
            "base": bootstrap.recipe_key(recipe) if recipe else None,
            "downloads": build_context.context_material(self.ctx.spec, cache_dir(self.ctx.store.root)),
        }

    def execute(self, out: Path) -> dict[str, Any]:
        spec, cfg = self.ctx.spec, self.ctx.spec.config
        # Mirrors, reachability and checksum-verified downloads first: fail in seconds, before the engine.
        prepared = build_context.prepare_context(spec, cache_dir(self.ctx.store.root), out / "work")
        client = engine.connect()
        info = engine.engine_info(client)
        recipe = self._recipe()
        base_id = bootstrap.ensure_base(client, recipe, cache_dir(self.ctx.store.root)) if recipe else None
        built = engine.build_image(
            client, prepared.path, containerfile=spec.containerfile.name,
            tag=f"localhost/assembler/{spec.name}:latest",
            buildargs={"SOURCE_DATE_EPOCH": str(cfg.source_date_epoch), **prepared.build_args, **cfg.build_args},
            nocache=self.ctx.nocache, on_output=_show_step,
        )
        shutil.rmtree(out / "work", ignore_errors=True)  # the context copy is not an artefact
        archive = out / "image.tar"
        engine.save_image(client, built.id, archive)
        result = flatten_and_index(archive, out, cfg.source_date_epoch)
        archive.unlink()
        return {
            "engine": {"name": info.name, "version": info.version},
            "base_image": base_id,
            "oci": {"digest": built.id,
                    "layers": [{"digest": s.diff_id, "step": s.created_by} for s in built.steps]},
            "downloads": prepared.downloads,
            "rootfs": {"path": ROOTFS_TAR, "sha256": result.sha256, "size": (out / ROOTFS_TAR).stat().st_size},
        }
