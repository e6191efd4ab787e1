"""`assembler build IMAGE`: run the pipeline (or a selection of its phases) for one image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from assembler.cli import complete
from assembler.errors import ConfigError

if TYPE_CHECKING:
    from assembler.config import Arch
    from assembler.pipeline import BuildRun

# The pipeline (engine SDK, libguestfs helpers, every phase) is imported when a build runs, not when the CLI
# starts: it is 0.3 s of the start of every other command, `assembler convert` included.


def _selected(phases: str | None) -> set[str] | None:
    from assembler.pipeline import PHASE_ORDER

    if not phases:
        return None
    chosen = {p.strip() for p in phases.split(",") if p.strip()}
    if "publish" in chosen:  # a build's outputs go to providers through their own command
        raise ConfigError("publish is not a build phase",
                          resolution="build, then `assembler publish IMAGE --provider PROVIDER` (see README)")
    unknown = {p.split(":")[0] for p in chosen} - set(PHASE_ORDER)
    if unknown:
        raise ConfigError(f"unknown phase(s): {', '.join(sorted(unknown))}",
                          resolution=f"choose from: {', '.join(PHASE_ORDER)}")
    return chosen


def registry_stores(cache_from: str | None, cache_to: str | None, *, offline: bool = False) -> dict[str, Any]:
    """BuildRun's cache_from/cache_to: the options (or their environment variables), else mirrors.yaml."""
    from assembler.mirrors import load_mirror_map
    from assembler.remote import RegistryStore

    if offline:
        if cache_from or cache_to:
            raise ConfigError("--offline fetches nothing: it cannot use a registry store",
                              resolution="drop --cache-from/--cache-to, or --offline")
        return {}
    mirrors = load_mirror_map()
    urls = {"cache_from": cache_from or mirrors.cache_from, "cache_to": cache_to or mirrors.cache_to}
    return {name: RegistryStore(url) if url else None for name, url in urls.items()}


def build(
    image: str = typer.Argument(..., autocompletion=complete.images,
        help="name under Containerfiles/ or a directory with a Containerfile"),
    fmt: list[str] = typer.Option(None, "--format", "-f", autocompletion=complete.formats,
        help="output format (repeatable); default from image.yaml"),
    output: Path | None = typer.Option(None, "--output", "-o", help="output directory (default out/IMAGE)"),
    cache: Path | None = typer.Option(None, "--cache-dir", help="cache (default ~/.cache/assembler)"),
    phases: str | None = typer.Option(None, "--phases", help="comma list: rootfs,disk,convert,boot"),
    size: str | None = typer.Option(None, "--size", help="fixed disk size, e.g. 4G"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the plan, run nothing"),
    no_cache: bool = typer.Option(False, "--no-cache", help="rebuild every phase (engine cache too)"),
    no_boot_test: bool = typer.Option(False, "--no-boot-test", help="skip the QEMU boot test phase"),
    customize: Path | None = typer.Option(None, "--customize", help="customisation YAML (users, packages, files, "
                                          "sysctls, kernel_args, services, run): one more layer, its own checks"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest (or plan) as JSON on stdout"),
    locked: bool = typer.Option(False, "--locked", help="install exactly image.lock.json or fail at once "
                                "(default: a stale lock is re-resolved with a warning)"),
    bundle: Path | None = typer.Option(None, "--bundle", help="take the lock and every locked file from this "
                                       "bundle (`assembler bundle`)"),
    offline: bool = typer.Option(False, "--offline", help="fetch nothing: the package store and the bundle only"),
    copy_outputs: bool = typer.Option(False, "--copy-outputs", help="out/ gets copies you may edit in place "
                                      "(default: read-only hard links to the cache, no second copy)"),
    cache_from: str | None = typer.Option(None, "--cache-from", envvar="ASSEMBLER_CACHE_FROM",
                                          help="pull the phases this build lacks from this registry store, "
                                               "http(s)://HOST[:PORT]/REPO (verified by digest)"),
    cache_to: str | None = typer.Option(None, "--cache-to", envvar="ASSEMBLER_CACHE_TO",
                                        help="push every phase this build makes or reuses to this registry store"),
    arch: str | None = typer.Option(None, "--arch", help="amd64 or arm64 (emulated); default: image.yaml "
                                    "architectures, each built in turn (out/IMAGE, out/IMAGE-arm64)"),
) -> None:
    """Build IMAGE: rootfs -> disk -> formats -> boot test; outputs and manifest.json in out/IMAGE/."""
    from assembler.config import cache_dir, resolve_image
    from assembler.formats import validate_format_names
    from assembler.pipeline import BuildRun
    from assembler.store import Store

    spec = resolve_image(image)
    if customize is not None:
        from assembler import customize as customization

        if not customize.is_file():
            raise ConfigError(f"no such customisation file: {customize}", resolution="pass an existing YAML file")
        customization.load(customize)  # a bad file fails now, before anything is built
        spec = spec.model_copy(update={"config": spec.config.model_copy(
            update={"customize": str(customize.resolve())})})
    if size is not None:
        from assembler.sizes import parse_size

        parse_size(size)  # a bad --size fails now, not after the rootfs was built
    lock = None
    if bundle is not None:
        from assembler.packages.bundle import read_bundle

        imported = read_bundle(bundle, cache_dir(cache))  # every blob verified into the store and cache
        lock = imported.lock
    formats = validate_format_names(fmt or spec.config.formats, spec.config.format_options)
    arches = [architecture(arch)] if arch else list(spec.config.architectures)
    selected = _selected(phases)
    for one in arches:
        built = spec.for_arch(one)
        if lock is not None and lock.image != built.name:
            raise ConfigError(f"the bundle {bundle} is for {lock.image}, not {built.name}",
                              resolution=f"build {lock.image} from it, or bundle {built.name}")
        where = output if output is not None and len(arches) == 1 else (output or Path.cwd() / "out") / built.name
        ctx = BuildRun(
            spec=built, store=Store(cache_dir(cache)), output_dir=where,
            formats=formats, nocache=no_cache, boot_test=not no_boot_test, disk_size=size, locked=locked,
            lock=lock, offline=offline, copy_outputs=copy_outputs,
            **registry_stores(cache_from, cache_to, offline=offline),
        )
        _run_one(ctx, selected, dry_run=dry_run, as_json=as_json)


def architecture(name: str) -> Arch:
    """Validate an --arch value."""
    from assembler.config import ARCHES

    for known in ARCHES:
        if name == known:
            return known
    raise ConfigError(f"unknown architecture {name!r}", resolution=f"use one of: {', '.join(ARCHES)}")


def _run_one(ctx: BuildRun, selected: set[str] | None, *, dry_run: bool, as_json: bool) -> None:
    from assembler.build import build as run_build
    from assembler.build import plan_build, print_plan

    spec = ctx.spec
    if selected and "scan" in selected and spec.config.scan is None:
        raise ConfigError(f"{spec.name} has no scan phase", resolution="add scan: {db: OSV-FILE} to its image.yaml, "
                          f"or scan the outputs: `assembler scan out/{spec.name} --db OSV-FILE`")
    if dry_run:
        plan = plan_build(ctx, selected, resolve=False)
        if as_json:
            typer.echo(json.dumps([{"phase": s.phase.label, "key": s.key, "action": s.action.value,
                                    "reason": s.reason} for s in plan], indent=2))
        else:
            print_plan(plan)
        return
    manifest = run_build(ctx, selected)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))


def pull_outputs(image: str, output: Path, cache: Path | None, cache_from: str, formats: list[str] | None) -> None:
    """out/IMAGE from the registry store alone (for `publish --cache-from` on a machine that built nothing):
    every phase must be there; none is computed here."""
    from assembler.build import build as run_build
    from assembler.build import plan_build
    from assembler.config import cache_dir, resolve_image
    from assembler.formats import validate_format_names
    from assembler.pipeline import Action, BuildRun
    from assembler.remote import RegistryStore
    from assembler.store import Store

    spec = resolve_image(image)
    remote = RegistryStore(cache_from)
    ctx = BuildRun(spec=spec, store=Store(cache_dir(cache)), output_dir=output,
                       formats=validate_format_names(formats or spec.config.formats,
                                                    spec.config.format_options), cache_from=remote)
    missing = [step.phase.label for step in plan_build(ctx) if step.action is Action.RUN]
    if missing:
        raise ConfigError(f"{spec.name}: {', '.join(missing)} not in the registry store {remote.name}",
                          resolution=f"build it there first (`assembler build {spec.name} --cache-to "
                                     f"{cache_from}` with the same formats), or publish from an out/ directory")
    run_build(ctx)
