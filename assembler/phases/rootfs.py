"""rootfs: build the Containerfile in the engine and flatten the image into a deterministic tar."""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker

from assembler import customize, engine, progress, secrets, tarindex
from assembler.config import NATIVE_ARCH, ImageSpec, cache_dir, rootfs_dir
from assembler.errors import EngineError
from assembler.fsutil import sha256_tree
from assembler.inputs import other_locks
from assembler.log import log
from assembler.packages import lockfile, locking
from assembler.packages.lockfile import LOCK_FILE, Lock, lock_name, read_lock, write_lock
from assembler.packages.proxy import Session
from assembler.packages.store import PackageStore
from assembler.pipeline import Artefact, Phase, execute_plan, make_plan
from assembler.remote import RegistryStore
from assembler.rootfs import ancestry, bootstrap, flatten, layers
from assembler.rootfs import context as build_context
from assembler.run import die_with_parent
from assembler.store import Entry

ROOTFS_TAR = "rootfs.tar"
ROOTFS_INDEX = "rootfs.index.json"  # each member's header offset in rootfs.tar, taken while flattening
LAYERS_INDEX = "layers.json"  # per-layer file index: what `assembler diff` attributes changes with
# Files of the build context that do not reach the engine's build and so must not bust the cache.
NOT_BUILD_INPUTS = ("image.yaml", "checks.yaml")


def context_hash(context: Path, arch: str = NATIVE_ARCH) -> str:
    """Hash of the build context minus the files that only configure later phases and the other
    architectures' locks (an arm64 lock is no input of the amd64 build)."""
    return sha256_tree(context, exclude=(*NOT_BUILD_INPUTS, *other_locks(arch)))


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
        # The disk phase reads it instead of scanning the tar's headers again.
        tarindex.write_index(result.index, out / ROOTFS_INDEX, result.sha256)
        indexing.result()
    return result


def _arch_option(spec: ImageSpec) -> str:
    return "" if spec.arch == NATIVE_ARCH else f" --arch {spec.arch}"


def _edited(context: Path, original: Path, containerfile: str, edit: Callable[[str], str], copy: Path) -> Path:
    """The build context with its Containerfile edited; never written in the user's directory."""
    if context == original:  # nothing was prepared (no downloads): the context is the image directory itself
        shutil.copytree(original, copy, symlinks=True)
        context = copy
    target = context / containerfile
    text = target.read_text()
    target.unlink()  # a symlinked Containerfile is replaced, not written through
    target.write_text(edit(text))
    return context


@dataclass(frozen=True)
class ParentImage:
    """The image of ours this one starts FROM, as this build used it."""

    name: str
    key: str  # its rootfs entry
    image_id: str  # the engine image the FROM resolved to
    rootfs_sha256: str
    layers: int  # how many of this image's layers are the parent's (bottom first)
    lock: Lock | None  # its effective lock: the child's layer "parent"

    def facts(self) -> dict[str, Any]:
        return {"image": self.name, "key": self.key, "oci": self.image_id, "rootfs_sha256": self.rootfs_sha256,
                "layers": self.layers}


class RootfsPhase(Phase):
    name = "rootfs"
    kind = "rootfs"
    version = 2  # 2: a Podman build's empty mount-point placeholders are dropped (flatten.ENGINE_MOUNT_POINTS)
    _redact: Callable[[str], str] = str
    _base_key: str | None = None
    _availability: build_context.Availability | None = None

    @functools.cached_property
    def parent(self) -> RootfsPhase | None:
        """The rootfs phase of the image this one starts FROM (assembler/NAME), run with this build's options."""
        spec = ancestry.parent_spec(self.ctx.spec)
        if spec is None:
            return None
        ancestry.ancestors(self.ctx.spec)  # a loop or conflicting bases: one error before any key
        return RootfsPhase(self.ctx.for_image(spec))

    def resolve(self) -> None:
        if self.parent is not None:
            self.parent.resolve()
        self._availability = build_context.probe_optional(self.ctx.spec, cache_dir(self.ctx.store.root))

    def _optional(self) -> build_context.Availability:
        """The probe's answer; without one (a dry run), what the last probe recorded."""
        if self._availability is None:
            self._availability = build_context.recorded_availability(self.ctx.spec, cache_dir(self.ctx.store.root))
        return self._availability

    def _native_recipe(self) -> bootstrap.BaseRecipe | None:
        """The base recipe as written (a name under rootfs/ or a path); an image FROM another of ours builds on
        that one's base."""
        base = ancestry.base_of(self.ctx.spec)
        return bootstrap.load_recipe(rootfs_dir() / base) if base else None

    def _recipe(self) -> bootstrap.BaseRecipe | None:
        """The recipe this build bootstraps: the native one, for the build's architecture."""
        native = self._native_recipe()
        return bootstrap.for_arch(native, self.ctx.spec.arch) if native else None

    def material(self) -> dict[str, Any]:
        recipe = self._recipe()
        cfg = self.ctx.spec.config
        return {
            "context": context_hash(self.ctx.spec.context, self.ctx.spec.arch),
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
            # Only for an image FROM another of ours: that image's rootfs key (its whole recipe, recursively).
            **({"parent": self.parent.key()} if self.parent is not None else {}),
            # Only for another architecture (amd64 keys stay as they were): what TARGETARCH and the platform say.
            **({"arch": self.ctx.spec.arch} if self.ctx.spec.arch != NATIVE_ARCH else {}),
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
                "lock": meta.get("lock"), "secrets": meta.get("secrets", []),
                **({"parent": meta["parent"]} if meta.get("parent") else {})}

    def share(self, entry: Entry, remote: RegistryStore) -> None:
        """The bootstrapped base too: another machine building an image on the same base reuses it."""
        key = entry.meta.get("base_entry")
        if isinstance(key, str):
            bootstrap.push_base(remote, key, cache_dir(self.ctx.store.root))

    def preflight(self) -> None:
        """--locked: every locked file must be servable before anything runs or is written."""
        if self.parent is not None:
            self.parent.preflight()
        spec = self.ctx.spec
        bootstrap.require_emulation(spec.arch)
        if (self.ctx.locked or self.ctx.offline) and self._recipe() is not None:
            locking.require_complete(self.ctx.lock or locking.read_image_lock(spec.context, spec.arch),
                                     spec.context, PackageStore(cache_dir(self.ctx.store.root)),
                                     offline=self.ctx.offline, snapshots=spec.config.snapshots, arch=spec.arch)

    def execute(self, out: Path) -> dict[str, Any]:
        # The image this one starts FROM first: reused from the store or built, present in the engine, and kept
        # there until this build has its own layers on it.
        with self._parent_in_engine(out / "parent") as from_image:
            return self._execute(out, from_image)

    def _execute(self, out: Path, from_image: ParentImage | None) -> dict[str, Any]:
        spec, cfg = self.ctx.spec, self.ctx.spec.config
        # Mirrors, reachability and checksum-verified downloads first: fail in seconds, before the engine.
        prepared = build_context.prepare_context(spec, cache_dir(self.ctx.store.root), out / "work",
                                                 availability=self._optional())
        loaded = customize.of(self.ctx.spec)
        if loaded is not None:  # one more layer after the image's own, which the engine's cache keeps
            step = customize.containerfile_step(loaded.custom, loaded.data)
            prepared = replace(prepared, path=_edited(prepared.path, spec.context, spec.containerfile.name,
                                                      lambda text: text + step, out / "work" / "customised"))
        mounted = secrets.prepare(spec, prepared.path, out / "work")
        self._redact = lambda text: secrets.redact(text, mounted.values)
        client = engine.connect()
        info = engine.engine_info(client)
        # TARGETARCH as BuildKit sets it (the classic builder does not): a Containerfile picks its packages by it.
        buildargs = {"SOURCE_DATE_EPOCH": str(cfg.source_date_epoch), "TARGETARCH": spec.arch,
                     **prepared.build_args, **cfg.build_args}
        recipe = self._recipe()
        locked: dict[str, Any] | None = None
        base_id = None
        # The image this build replaces leaves the engine while the new one is saved and flattened.
        with engine.dropping_alongside() as drop:
            with secrets.serving(mounted.values) as (endpoint, served):
                if endpoint:
                    buildargs["no_proxy"] = secrets.no_proxy_with(buildargs.get("no_proxy", ""), endpoint)
                if recipe is None:  # a registry base: its apt sources are the Containerfile's own (dated snapshots)
                    context = self._on_parent(mounted.context, from_image, None, out)
                    built = self._build(client, context, buildargs, drop)
                else:
                    built, base_id, locked = self._build_locked(client, recipe, mounted.context, buildargs, out,
                                                                drop, from_image)
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
            **({"parent": from_image.facts()} if from_image is not None else {}),
            "rootfs": {"path": ROOTFS_TAR, "sha256": result.sha256, "size": (out / ROOTFS_TAR).stat().st_size},
        }

    def _build(self, client: docker.DockerClient, context: Path, buildargs: dict[str, str],
               drop: engine.Drop, nocache: bool | None = None) -> engine.BuiltImage:
        spec = self.ctx.spec
        return engine.build_image(
            client, context, containerfile=spec.containerfile.name, tag=f"localhost/assembler/{spec.name}:latest",
            platform=None if spec.arch == NATIVE_ARCH else f"linux/{spec.arch}",
            buildargs=buildargs, nocache=self.ctx.nocache if nocache is None else nocache, on_output=_show_step,
            redact=self._redact, drop=drop)

    @contextmanager
    def _parent_in_engine(self, scratch: Path) -> Iterator[ParentImage | None]:
        """The parent's image, pinned in the engine while the block runs: another build of the parent (a
        rebuild, a parallel job on this engine) moves its tag and would remove the image this one starts FROM."""
        if self.parent is None:
            yield None
            return
        client, name = engine.connect(), self.parent.ctx.spec.name
        with engine.pinned_fresh(client, lambda: self._parent_image(client, scratch), lambda found: found.image_id,
                                 f"localhost/assembler/{name}", f"{name}'s image") as found:
            yield found

    def _parent_image(self, client: docker.DockerClient, scratch: Path) -> ParentImage:
        """The parent's rootfs entry (its own plan: reused, pulled or built) and its image in the engine."""
        assert self.parent is not None
        run, label = self.parent.ctx, self.parent.label
        progress.stage(f"the image it starts FROM: {run.spec.name}")
        execute_plan(run, make_plan(run, [self.parent]))
        entry = run.results[label]
        oci, rootfs = entry.meta.get("oci") or {}, entry.meta.get("rootfs") or {}
        image_id, count = str(oci.get("digest", "")), len(oci.get("layers") or [])
        # The entry may come from a registry store: what reaches the Containerfile must be an image ID.
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", image_id) or not engine.image_exists(client, image_id):
            log.info("the engine lacks %s's image %s: building it again (the engine's layer cache helps)",
                     run.spec.name, image_id[:19])
            meta = self.parent.execute(scratch)  # same lock, same content; only the engine image is wanted
            shutil.rmtree(scratch, ignore_errors=True)
            image_id, count = meta["oci"]["digest"], len(meta["oci"]["layers"])
        lock = read_lock(entry.file(LOCK_FILE)) if entry.meta.get("lock") else None
        return ParentImage(run.spec.name, entry.key, image_id, str(rootfs.get("sha256", "")), count, lock)

    def _on_base(self, context: Path, recipe: bootstrap.BaseRecipe, out: Path) -> Path:
        """For another architecture, the context whose Containerfile starts FROM that architecture's base tag."""
        native = self._native_recipe()
        if native is None or native.tag == recipe.tag:
            return context
        spec = self.ctx.spec
        return _edited(context, spec.context, spec.containerfile.name,
                       lambda text: build_context.rewrite_from(text, native.tag, recipe.tag), out / "work" / "arch")

    def _on_parent(self, context: Path, from_image: ParentImage | None, lock: Lock | None, out: Path) -> Path:
        """The context whose Containerfile starts FROM the parent's engine image. With a replayed lock the image
        is labelled with its digest, as a base is: the engine reuses RUN steps only for builds of that lock."""
        if from_image is None:
            return context
        spec = self.ctx.spec
        labels = {bootstrap.LOCK_LABEL: lock.digest()} if lock is not None else None
        return _edited(context, spec.context, spec.containerfile.name,
                       lambda text: build_context.from_parent(text, from_image.name, from_image.image_id, labels),
                       out / "work" / "from-parent")

    def _build_locked(self, client: docker.DockerClient, recipe: bootstrap.BaseRecipe, context: Path,
                      buildargs: dict[str, str], out: Path, drop: engine.Drop, from_image: ParentImage | None
                      ) -> tuple[engine.BuiltImage, str, dict[str, Any]]:
        """Base and Containerfile with apt going through the locking proxy; the effective lock to out/."""
        spec, cache = self.ctx.spec, cache_dir(self.ctx.store.root)
        committed = self.ctx.lock or locking.read_image_lock(spec.context, spec.arch)
        session, missing = locking.session_for(spec.name, spec.context, cache, bootstrap.recipe_keyrings(recipe),
                                               strict=self.ctx.locked, update=self.ctx.update_lock,
                                               lock=self.ctx.lock, offline=self.ctx.offline,
                                               snapshots=spec.config.snapshots, arch=spec.arch)
        replay = session.lock
        if from_image is not None:
            self._require_parent_lock(from_image, committed)
        with session.serving(), ExitStack() as pins:
            session.prefetch("image")  # while the base is checked (or bootstrapped): downloads run alongside
            if from_image is None:
                context = self._on_base(context, recipe, out)
                progress.stage(f"base image ({recipe.name})")
                base = self._pinned_base(client, recipe, session, replay, pins)
                # FROM the pinned image itself: the tag may move to another build's base meanwhile.
                context = _edited(context, spec.context, spec.containerfile.name,
                                  lambda text: build_context.rewrite_from(text, recipe.tag, base.engine_image),
                                  out / "work" / "pinned-base")
                self._base_key = base.key
                base_id, base_packages, base_indexes = base.image_id, base.packages, base.indexes
            else:
                context = self._on_parent(context, from_image, replay, out)
                base_id = from_image.image_id
                base_packages = ancestry.inherited(from_image.lock) if from_image.lock else []
                base_indexes = list(from_image.lock.indexes) if from_image.lock else []
            session.layer = "image"
            try:
                built = self._build(client, context, {**buildargs, "http_proxy": session.proxy_url}, drop,
                                    nocache=self.ctx.nocache or replay is None)
            except EngineError as exc:
                if session.refused:
                    raise locking.StaleLockError(
                        f"the Containerfile of {spec.name} installs packages that are not in its lock (--locked)",
                        details="\n".join(f"  {r.reason}" for r in session.refused),
                        resolution=f"run `assembler lock {spec.context}{_arch_option(spec)} --update` and commit "
                                   f"{lock_name(spec.arch)}") from exc
                raise
        effective = session.effective_lock(base_packages, base_indexes)
        write_lock(out / LOCK_FILE, effective)
        if missing and committed is not None and not self.ctx.update_lock:
            locking.remember_relock(cache, spec.name, committed, effective)
        moved = lockfile.changes(committed, effective)
        if committed is None:  # nothing to compare with: every package would be listed as a change
            log.info("%s has no %s: %d packages resolved; `assembler lock %s%s` writes one", spec.name,
                     lock_name(spec.arch), len(effective.packages), spec.context, _arch_option(spec))
        else:
            locking.report(spec.name, moved)
        meta = {"path": LOCK_FILE, "sha256": effective.digest(), "replayed": session.lock is not None,
                "committed": committed.digest() if committed else None, "missing": missing[:100],
                "changes": [str(c) for c in moved] if committed else [], "packages": len(effective.packages)}
        return built, base_id, meta

    def _pinned_base(self, client: docker.DockerClient, recipe: bootstrap.BaseRecipe, session: Session,
                     replay: Lock | None, pins: ExitStack) -> bootstrap.BaseImage:
        """The base in the engine, pinned until the build ends: builds of other locks load their labelled base
        under the same tag, and the one they replace is dropped unless something still names it.

        Replaying a lock: the base is labelled with its digest, so the engine's layer cache is reused only for
        builds of that same lock. Re-resolving: no engine cache (a cached RUN layer holds what another mirror
        state installed, and every .deb must pass the proxy for the lock to be complete)."""
        def ensure() -> bootstrap.BaseImage:
            return bootstrap.ensure_base(client, recipe, cache_dir(self.ctx.store.root), session,
                                         label=replay.digest() if replay else None,
                                         cache_from=self.ctx.cache_from, cache_to=self.ctx.cache_to)

        return pins.enter_context(engine.pinned_fresh(client, ensure, lambda base: base.engine_image,
                                                      recipe.tag.rsplit(":", 1)[0], f"the base {recipe.tag}"))

    def _require_parent_lock(self, from_image: ParentImage, committed: Lock | None) -> None:
        """--locked: the committed lock was made on this very parent (its packages, layer "parent")."""
        if not (self.ctx.locked or self.ctx.offline) or committed is None or from_image.lock is None:
            return
        want = {(p.url, p.sha256) for p in ancestry.inherited(from_image.lock)}
        have = {(p.url, p.sha256) for p in committed.packages if p.layer == "parent"}
        if want != have:
            raise locking.StaleLockError(
                f"the lock of {self.ctx.spec.name} was made on another build of {from_image.name}",
                details=f"{len(want - have)} of {from_image.name}'s package(s) are not in it, "
                        f"{len(have - want)} in it are not {from_image.name}'s",
                resolution=f"run `assembler lock {self.ctx.spec.context}{_arch_option(self.ctx.spec)} --update` and "
                           f"commit {lock_name(self.ctx.spec.arch)}")
