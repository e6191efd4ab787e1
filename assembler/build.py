"""The whole build on one screen: plan the phases, run them, publish outputs, write the manifest."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from assembler import __version__, space
from assembler import outputs as outputs_mod
from assembler.disk import tool_versions as disk_tool_versions
from assembler.fsutil import write_json
from assembler.log import console
from assembler.phases.boot import BootPhase
from assembler.phases.convert import ConvertPhase
from assembler.phases.disk import DiskPhase
from assembler.phases.rootfs import RootfsPhase
from assembler.phases.scan import ScanPhase
from assembler.pipeline import Action, BuildRun, Phase, PhaseRecord, PhaseRun, execute_plan, make_plan
from assembler.run import tool_version


def phases_for(ctx: BuildRun) -> list[Phase]:
    """rootfs -> disk -> scan (with scan: in image.yaml) -> convert (one per format) -> boot; each phase names
    the phases it reads."""
    rootfs = RootfsPhase(ctx)
    disk = DiskPhase(ctx, (rootfs,))
    # A failing scan stops the build before the conversions and the minutes of a boot test.
    scan: list[Phase] = [ScanPhase(ctx, (disk,))] if ctx.spec.config.scan else []
    converts: list[Phase] = [ConvertPhase(ctx, (disk,), fmt) for fmt in ctx.formats if fmt != "raw"]
    phases: list[Phase] = [rootfs, disk, *scan, *converts]
    if ctx.boot_test:
        phases.append(BootPhase(ctx, (disk,)))
    return phases


def plan_build(ctx: BuildRun, selected: set[str] | None = None, *, resolve: bool = True) -> list[PhaseRun]:
    """The plan; `resolve=False` (a dry run) asks nothing of the network and keys use what was last recorded."""
    phases = phases_for(ctx)
    if resolve:
        for phase in phases:
            phase.resolve()
    return make_plan(ctx, phases, selected)


def build(ctx: BuildRun, selected: set[str] | None = None) -> dict[str, Any]:
    """Run the build and return the manifest written to the output directory."""
    started = time.monotonic()
    for orphan in ctx.store.clean_stale():
        console.print(f"[dim]removed {orphan.name}, left in the cache by a killed build[/]")
    plan = plan_build(ctx, selected)
    print_plan(plan)
    store_need, out_need = space.estimate(step.phase.kind for step in plan
                                          if step.action in (Action.RUN, Action.PULL))
    space.check_free_space({ctx.store.root: store_need, ctx.output_dir: out_need})
    records = execute_plan(ctx, plan)
    done = [step.phase for step in plan if step.phase.label in ctx.results]
    outputs = outputs_mod.publish(ctx, done)
    manifest = make_manifest(ctx, done, records, outputs, round(time.monotonic() - started, 2))
    write_json(ctx.output_dir / "manifest.json", manifest)
    print_outputs(ctx, outputs, manifest["seconds"])
    return manifest


def print_plan(plan: list[PhaseRun]) -> None:
    table = Table("phase", "key", "action", "reason", title="plan")
    colours = {Action.RUN: "cyan", Action.CACHED: "green", Action.PULL: "green", Action.SKIP: "dim"}
    for step in plan:
        colour = colours[step.action]
        table.add_row(step.phase.label, step.key[:12], f"[{colour}]{step.action.value}[/]", step.reason)
    console.print(table)


def print_outputs(ctx: BuildRun, outputs: list[dict[str, Any]], seconds: float) -> None:
    """What the build left, as paths a user can open (relative to the working directory when inside it)."""
    where = ctx.output_dir.resolve()
    shown = where.relative_to(Path.cwd()) if where.is_relative_to(Path.cwd()) else where
    console.print(f"[bold green]done[/] {ctx.spec.name} in {seconds} s: {shown}/", soft_wrap=True)
    for item in [*outputs, {"format": "manifest", "path": "manifest.json"}]:
        console.print(f"  {shown / item['path']}  [dim]({item['format']})[/]", highlight=False, soft_wrap=True)


def tool_versions() -> dict[str, str]:
    """Every host tool the build ran, for the manifest: the disk's own list (also in its key) and the rest."""
    return {
        "assembler": __version__,
        "python": platform.python_version(),
        "mmdebstrap": tool_version("mmdebstrap"),
        **disk_tool_versions(),
        "qemu-img": tool_version("qemu-img"),
        "qemu-system-x86_64": tool_version("qemu-system-x86_64"),
        "libguestfs": tool_version("guestfish"),
    }


def make_manifest(ctx: BuildRun, done: list[Phase], records: list[PhaseRecord], outputs: list[dict[str, Any]],
                  seconds: float) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "image": ctx.spec.name,
        "source_date_epoch": ctx.spec.config.source_date_epoch,
        "phases": [asdict(r) for r in records],
        "outputs": outputs,
        "tools": tool_versions(),
        "seconds": seconds,
    }
    for phase in done:
        manifest |= phase.manifest_fields(ctx.results[phase.label])
    return manifest
