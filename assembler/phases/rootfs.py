"""rootfs: build the Containerfile in the engine and flatten the image into a deterministic tar."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker

from assembler import customize, engine, progress, secrets
from assembler.config import cache_dir, rootfs_dir
from assembler.errors import EngineError
from assembler.fsutil import sha256_tree
from assembler.log import log
from assembler.packages import lockfile, locking
from assembler.packages.lockfile import LOCK_FILE, write_lock
from assembler.packages.store import PackageStore
from assembler.pipeline import Artefact, Phase
from assembler.remote import RegistryStore
from assembler.rootfs import bootstrap, flatten, layers
from assembler.rootfs import context as build_context
from assembler.run import die_with_parent
from assembler.store import Entry

ROOTFS_TAR = "rootfs.tar"
LAYERS_INDEX = "layers.json"  # per-layer file index: what `assembler diff` attributes changes with
# Files of the build context that do not reach the engine's build and so must not bust the cache.
NOT_BUILD_INPUTS = ("image.yaml", "checks.yaml")


def context_hash(context: Path) -> str:
    """Hash of the build context minus the files that only configure later phases."""
    return sha256_tree(context, exclude=NOT_BUILD_INPUTS)


def _show_step(line: str) -> None:
    # The engine streams every line of every RUN; the step headers are enough to follow progress
    # (Docker's "Step 3/9 : RUN ...", Podman's "[1/2] STEP 3/9: RUN ...").
    if engine.is_step_header(line) or line.startswith("Successfully built"):
        progress.stage(line.strip(), keep=True)
    else:
        log.debug("%s", line.rstrip())


def _write_layer_index(archive: Path, dest: Path, cache: layers.LayerCache | None) -> None:
    layers.index_archive(archive, dest, cache)  # returns nothing: the index is read back from dest when needed


def flatten_and_index(archive: Path, out: Path, source_date_epoch: int,
                      cache: layers.LayerCache | None = None) -> flatten.FlattenResult:
    """The rootfs tar and the per-layer index of a saved image, side by side.

    Both only read the archive and both are Python-bound (tar parsing holds the GIL), so the index is
    written by a forked process on the second core while this one flattens. Forked, not spawned: spawn
    re-imports the caller's __main__, which fails for `python -c` and notebooks; the child touches no lock
    the parent's threads (the progress spinner) may hold, only the archive and its own output file.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        indexing = pool.submit(_write_layer_index, archive, out / LAYERS_INDEX, cache)
        result = flatten.flatten(archive, out / ROOTFS_TAR, source_date_epoch=source_date_epoch,
                                 members=cache.members if cache is not None else None)
        indexing.result()
    return result


def _with_step(context: Path, original: Path, containerfile: str, step: str, copy: Path) -> Path:
    """The build context with `step` appended to its Containerfile; never written in the user's directory."""
    if context == original:  # nothing was prepared (no downloads): the context is the image directory itself
        shutil.copytree(original, copy, symlinks=True)
        context = copy
    target = context / containerfile
    text = target.read_text()
    target.unlink()  # a symlinked Containerfile is replaced, not written through
    target.write_text(text + step)
    return context


class RootfsPhase(Phase):
    name = "rootfs"
    kind = "rootfs"
    version = 2  # 2: a Podman build's empty mount-point placeholders are dropped (flatten.ENGINE_MOUNT_POINTS)
    _redact: Callable[[str], str] = str
    _base_key: str | None = None
    _availability: build_context.Availability | None = None

    def resolve(self) -> None:
        self._availability = build_context.probe_optional(self.ctx.spec, cache_dir(self.ctx.store.root))

    def _optional(self) -> build_context.Availability:
        """The probe's answer; without one (a dry run), what the last probe recorded."""
        if self._availability is None:
            self._availability = build_context.recorded_availability(self.ctx.spec, cache_dir(self.ctx.store.root))
        return self._availability

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
            # --locked never reuses what a default build made from a re-resolved (stale) lock.
            "locked": self.ctx.locked or self.ctx.offline,
            "lock": self.ctx.lock.digest() if self.ctx.lock else None,  # a bundle's, instead of the directory's
            "downloads": build_context.context_material(self.ctx.spec, self._optional()),
            # Ids only, and only when declared (keys of images without secrets stay as they were): a value is
            # never hashed into a key; as with BuildKit, a changed value alone reuses the entry.
            **({"secrets": sorted(cfg.secrets)} if cfg.secrets else {}),
            # Only when declared, like secrets: the declaration and its files' bytes (customize.digest).
            **({"customize": loaded.digest} if (loaded := customize.of(self.ctx.spec)) else {}),
        }

    def artefacts(self, entry: Entry) -> list[Artefact]:
        name = self.ctx.spec.name
        found = [Artefact(entry.file(ROOTFS_TAR), f"{name}-rootfs.tar", entry.key, "rootfs-tar",
                          entry.meta["rootfs"]["sha256"]),
                 Artefact(entry.file(LAYERS_INDEX), f"{name}-layers.json", entry.key)]
        if entry.meta.get("lock"):
            found.append(Artefact(entry.file(LOCK_FILE), f"{name}.lock.json", entry.key, "lock"))
        return found

    def manifest_fields(self, entry: Entry) -> dict[str, Any]:
        meta = entry.meta
        return {"oci": meta["oci"], "rootfs": meta["rootfs"], "engine": meta["engine"],
                "base_image": meta.get("base_image"), "downloads": meta.get("downloads", []),
                "lock": meta.get("lock"), "secrets": meta.get("secrets", [])}

    def share(self, entry: Entry, remote: RegistryStore) -> None:
        """The bootstrapped base too: another machine building an image on the same base reuses it."""
        key = entry.meta.get("base_entry")
        if isinstance(key, str):
            bootstrap.push_base(remote, key, cache_dir(self.ctx.store.root))

    def preflight(self) -> None:
        """--locked: every locked file must be servable before anything runs or is written."""
        if (self.ctx.locked or self.ctx.offline) and self._recipe() is not None:
            locking.require_complete(self.ctx.lock or locking.read_image_lock(self.ctx.spec.context),
                                     self.ctx.spec.context, PackageStore(cache_dir(self.ctx.store.root)),
                                     offline=self.ctx.offline, snapshots=self.ctx.spec.config.snapshots)

    def execute(self, out: Path) -> dict[str, Any]:
        spec, cfg = self.ctx.spec, self.ctx.spec.config
        # Mirrors, reachability and checksum-verified downloads first: fail in seconds, before the engine.
        prepared = build_context.prepare_context(spec, cache_dir(self.ctx.store.root), out / "work",
                                                 availability=self._optional())
        loaded = customize.of(self.ctx.spec)
        if loaded is not None:  # one more layer after the image's own, which the engine's cache keeps
            prepared = replace(prepared, path=_with_step(prepared.path, spec.context, spec.containerfile.name,
                                                         customize.containerfile_step(loaded.custom, loaded.data),
                                                         out / "work" / "customised"))
        mounted = secrets.prepare(spec, prepared.path, out / "work")
        self._redact = lambda text: secrets.redact(text, mounted.values)
        client = engine.connect()
        info = engine.engine_info(client)
        buildargs = {"SOURCE_DATE_EPOCH": str(cfg.source_date_epoch), **prepared.build_args, **cfg.build_args}
        recipe = self._recipe()
        locked: dict[str, Any] | None = None
        base_id = None
        # The image this build replaces leaves the engine while the new one is saved and flattened.
        with engine.dropping_alongside() as drop:
            with secrets.serving(mounted.values) as (endpoint, served):
                if endpoint:
                    buildargs["no_proxy"] = secrets.no_proxy_with(buildargs.get("no_proxy", ""), endpoint)
                if recipe is None:  # a registry base: its apt sources are the Containerfile's own (dated snapshots)
                    built = self._build(client, mounted.context, buildargs, drop)
                else:
                    built, base_id, locked = self._build_locked(client, recipe, mounted.context, buildargs, out,
                                                                drop)
            shutil.rmtree(out / "work", ignore_errors=True)  # the context copy is not an artefact
            archive = out / "image.tar"
            progress.stage("saving the image from the engine")
            engine.save_image(client, built.id, archive)
            progress.stage("flattening the layers and indexing their files")
            result = flatten_and_index(archive, out, cfg.source_date_epoch,
                                       layers.LayerCache(cache_dir(self.ctx.store.root)))
            archive.unlink()
        secrets.require_absent(out / ROOTFS_TAR, mounted.values)  # before the entry can be committed
        return {
            "engine": {"name": info.name, "version": info.version},
            "base_image": base_id,
            "oci": {"digest": built.id,
                    "layers": [{"digest": s.diff_id, "step": s.created_by} for s in built.steps]},
            "downloads": prepared.downloads,
            "lock": locked,
            "secrets": [{"id": sid, "served": served.get(sid, 0)} for sid in sorted(mounted.values)],
            "base_entry": self._base_key,  # what share() pushes beside the entry (--cache-to)
            "rootfs": {"path": ROOTFS_TAR, "sha256": result.sha256, "size": (out / ROOTFS_TAR).stat().st_size},
        }

    def _build(self, client: docker.DockerClient, context: Path, buildargs: dict[str, str],
               drop: engine.Drop, nocache: bool | None = None) -> engine.BuiltImage:
        spec = self.ctx.spec
        return engine.build_image(
            client, context, containerfile=spec.containerfile.name, tag=f"localhost/assembler/{spec.name}:latest",
            buildargs=buildargs, nocache=self.ctx.nocache if nocache is None else nocache, on_output=_show_step,
            redact=self._redact, drop=drop)

    def _build_locked(self, client: docker.DockerClient, recipe: bootstrap.BaseRecipe, context: Path,
                      buildargs: dict[str, str], out: Path, drop: engine.Drop
                      ) -> tuple[engine.BuiltImage, str, dict[str, Any]]:
        """Base and Containerfile with apt going through the locking proxy; the effective lock to out/."""
        spec, cache = self.ctx.spec, cache_dir(self.ctx.store.root)
        committed = self.ctx.lock or locking.read_image_lock(spec.context)
        session, missing = locking.session_for(spec.name, spec.context, cache, bootstrap.recipe_keyrings(recipe),
                                               strict=self.ctx.locked, update=self.ctx.update_lock,
                                               lock=self.ctx.lock, offline=self.ctx.offline,
                                               snapshots=spec.config.snapshots)
        replay = session.lock
        with session.serving():
            session.prefetch("image")  # while the base is checked (or bootstrapped): downloads run alongside
            progress.stage(f"base image ({recipe.name})")
            # Replaying a lock: the base is labelled with its digest, so the engine's layer cache is reused only
            # for builds of that same lock. Re-resolving: no engine cache (a cached RUN layer holds what another
            # mirror state installed, and every .deb must pass the proxy for the lock to be complete).
            base = bootstrap.ensure_base(client, recipe, cache, session,
                                         label=replay.digest() if replay else None,
                                         cache_from=self.ctx.cache_from, cache_to=self.ctx.cache_to)
            session.layer = "image"
            try:
                built = self._build(client, context, {**buildargs, "http_proxy": session.proxy_url}, drop,
                                    nocache=self.ctx.nocache or replay is None)
            except EngineError as exc:
                if session.refused:
                    raise locking.StaleLockError(
                        f"the Containerfile of {spec.name} installs packages that are not in its lock (--locked)",
                        details="\n".join(f"  {r.reason}" for r in session.refused),
                        resolution=f"run `assembler lock {spec.context} --update` and commit {LOCK_FILE}") from exc
                raise
        effective = session.effective_lock(base.packages, base.indexes)
        write_lock(out / LOCK_FILE, effective)
        if missing and committed is not None and not self.ctx.update_lock:
            locking.remember_relock(cache, spec.name, committed, effective)
        moved = lockfile.changes(committed, effective)
        locking.report(spec.name, moved)
        meta = {"path": LOCK_FILE, "sha256": effective.digest(), "replayed": session.lock is not None,
                "committed": committed.digest() if committed else None, "missing": missing[:100],
                "changes": [str(c) for c in moved], "packages": len(effective.packages)}
        self._base_key = base.key
        return built, base.image_id, meta
