"""The ordered phases, the plan (what runs and why) and its execution against the store."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from assembler import progress
from assembler.config import ImageSpec
from assembler.errors import AssemblerError
from assembler.fsutil import canonical_json, sha256_bytes
from assembler.log import console, log
from assembler.packages.lockfile import Lock
from assembler.remote import PushResult, RegistryStore
from assembler.store import Entry, Store

PHASE_ORDER = ("rootfs", "disk", "scan", "convert", "boot")


@dataclass
class BuildRun:
    """One build run: what every phase may read (the image, the store, this build's options) and its results."""

    spec: ImageSpec
    store: Store
    output_dir: Path
    formats: list[str]
    nocache: bool = False
    boot_test: bool = True
    disk_size: str | None = None
    locked: bool = False  # install exactly the committed lock or fail (a release pipeline's mode)
    update_lock: bool = False  # re-resolve against today's archive whatever the lock says
    lock: Lock | None = None  # a bundle's lock, used instead of the image directory's
    offline: bool = False  # no mirror at all: the package store (filled from a bundle) only
    copy_outputs: bool = False  # out/ gets separate copies instead of read-only hard links to the cache
    cache_from: RegistryStore | None = None  # a shared phase store: entries this build lacks are pulled from it
    cache_to: RegistryStore | None = None  # every entry this build makes or reuses is pushed to it
    results: dict[str, Entry] = field(default_factory=dict)

    def for_image(self, spec: ImageSpec) -> BuildRun:
        """The run that builds another image's rootfs for this one (the image it starts FROM): same store and
        options, its own lock, no outputs of its own."""
        return replace(self, spec=spec, formats=[], boot_test=False, disk_size=None, update_lock=False, lock=None,
                       results={})


@dataclass(frozen=True)
class Artefact:
    """A file of a phase's entry that the build publishes into out/IMAGE/."""

    source: Path
    name: str  # file name in out/IMAGE/
    key: str  # store key of the entry it comes from
    fmt: str | None = None  # listed in manifest.json outputs when set
    sha256: str | None = None  # known from the phase's metadata; computed otherwise


class Phase(ABC):
    """A small typed unit: declared inputs and options -> cache key -> output directory in the store."""

    name: ClassVar[str]
    kind: ClassVar[str]  # one of PHASE_ORDER; several phases may share a kind (convert:qcow2, ...)
    version: ClassVar[int] = 1

    def __init__(self, ctx: BuildRun, inputs: tuple[Phase, ...] = ()) -> None:
        self.ctx = ctx
        self.inputs = inputs

    @property
    def label(self) -> str:
        return self.name

    @abstractmethod
    def material(self) -> dict[str, Any]:
        """Everything the output depends on besides the input keys (options, file hashes, tool versions)."""

    def key(self) -> str:
        doc = {
            "phase": self.label,
            "version": self.version,
            "inputs": [phase.key() for phase in self.inputs],
            "material": self.material(),
        }
        return sha256_bytes(canonical_json(doc))

    def input_entry(self, label: str) -> Entry:
        return self.ctx.results[label]

    @abstractmethod
    def execute(self, out: Path) -> dict[str, Any]:
        """Write the phase's artefacts into `out` and return its metadata."""

    def resolve(self) -> None:
        """Look up, once and before any key is computed, what the key depends on that only the network can
        tell (key() itself reads declared files only). A dry run skips it: keys then use what was last
        recorded."""
        return None  # most phases need nothing from outside the machine

    def preflight(self) -> None:
        """Checks that must pass before any phase runs (fail in seconds, nothing written)."""
        return None  # most phases have none

    def artefacts(self, entry: Entry) -> list[Artefact]:
        """The files of this phase's entry that go to out/IMAGE/, under their output names."""
        return []

    def manifest_fields(self, entry: Entry) -> dict[str, Any]:
        """What this phase's entry adds to the top level of manifest.json."""
        return {}

    def share(self, entry: Entry, remote: RegistryStore) -> None:
        """Push what else a build on another machine needs to build on this entry (--cache-to)."""
        return None  # most phases: their entry alone

    def cacheable(self) -> bool:
        return not self.ctx.nocache


class Action(StrEnum):
    RUN = "run"
    CACHED = "cached"
    PULL = "pull"  # in the registry store (--cache-from): pulled and verified, not built
    SKIP = "skip"


@dataclass(frozen=True)
class PhaseRun:
    phase: Phase
    key: str
    action: Action
    reason: str


LOCAL, BUILT = "local cache", "built"


@dataclass
class PhaseRecord:
    name: str
    key: str
    cached: bool
    seconds: float
    reason: str
    source: str = BUILT  # "built", "local cache" or "registry HOST/REPO": where the entry came from
    pushed: str | None = None  # with --cache-to: what the push did (PushResult)


class _Absent(Exception):
    """The registry lost the entry between plan and pull."""


def _reason(ctx: BuildRun, phase: Phase, key: str) -> tuple[Action, str]:
    if ctx.nocache:
        return Action.RUN, "cache disabled (--no-cache)"
    if ctx.store.get(key) is not None:
        return Action.CACHED, "cached"
    if ctx.cache_from is not None and _remote_has(ctx.cache_from, key):
        return Action.PULL, "in the registry store"
    previous = ctx.store.ref(ctx.spec.name, phase.label)
    if previous is None:
        return Action.RUN, "not built before"
    return Action.RUN, "inputs changed"


def _remote_has(remote: RegistryStore, key: str) -> bool:
    try:
        return remote.lookup(key) is not None
    except AssemblerError as exc:  # an unreachable or foreign store is not a reason to fail: build instead
        log.warning("registry store %s: %s; building instead", remote.name, exc.brief)
        return False


def make_plan(ctx: BuildRun, phases: list[Phase], selected: set[str] | None = None) -> list[PhaseRun]:
    """Decide for every phase whether it runs, is reused, or is skipped, before anything runs."""
    plan: list[PhaseRun] = []
    needed = _needed_labels(phases, selected)
    for phase in phases:
        key = phase.key()
        if phase.label not in needed:
            plan.append(PhaseRun(phase, key, Action.SKIP, "not selected"))
            continue
        action, reason = _reason(ctx, phase, key)
        if selected is not None and phase.kind not in selected and phase.label not in selected:
            reason = "cached" if action is Action.CACHED else f"{reason}; needed by a selected phase"
        plan.append(PhaseRun(phase, key, action, reason))
    return plan


def _needed_labels(phases: list[Phase], selected: set[str] | None) -> set[str]:
    if selected is None:
        return {p.label for p in phases}
    needed: set[str] = set()

    def add(phase: Phase) -> None:
        needed.add(phase.label)
        for dep in phase.inputs:
            add(dep)

    for phase in phases:
        if phase.kind in selected or phase.label in selected:
            add(phase)
    return needed


def execute_plan(ctx: BuildRun, plan: list[PhaseRun]) -> list[PhaseRecord]:
    for step in plan:
        if step.action is Action.RUN:
            step.phase.preflight()
    records: list[PhaseRecord] = []
    for step in plan:
        if step.action is Action.SKIP:
            continue
        started = time.monotonic()
        entry, source, reason = _run_or_reuse(ctx, step)
        ctx.results[step.phase.label] = entry
        ctx.store.set_ref(ctx.spec.name, step.phase.label, step.key)
        seconds = round(time.monotonic() - started, 2)
        cached = source != BUILT
        verb = "[green]reused[/]" if source == LOCAL else "[green]pulled[/]" if cached else "[cyan]built[/]"
        console.print(f"  {verb} {step.phase.label:<16} {step.key[:12]}  {seconds:7.1f}s  ({reason})")
        pushed = None
        if ctx.cache_to is not None:
            pushed = _push(ctx, entry)
            step.phase.share(entry, ctx.cache_to)
        records.append(PhaseRecord(step.phase.label, step.key, cached, seconds, reason, source, pushed))
    return records


def _push(ctx: BuildRun, entry: Entry) -> str:
    remote = ctx.cache_to
    assert remote is not None
    with progress.activity(f"{entry.meta.get('phase')}: pushing to {remote.name}"), \
            ctx.store.scratch("push") as scratch:
        pushed = remote.push(entry.key, entry.path, entry.meta, scratch)
    if pushed.result is PushResult.CONFLICT:
        console.print(f"[bold red]reproducibility failure[/]: {entry.meta.get('phase')} {entry.key[:12]} in "
                      f"{remote.name} holds other files than this build made (the registry keeps the first):")
        for line in pushed.differences:
            console.print(f"    {line}", highlight=False)
        return f"{pushed.result.value}: " + "; ".join(pushed.differences)
    console.print(f"  [dim]{pushed.result.value}: {remote.name}:{entry.key[:12]}[/]")
    return pushed.result.value


def _run_or_reuse(ctx: BuildRun, step: PhaseRun) -> tuple[Entry, str, str]:
    """The phase's entry, where it came from and why."""
    store = ctx.store
    if step.action is Action.CACHED:
        entry = store.get(step.key)
        if entry is not None:
            return entry, LOCAL, step.reason
    reason = step.reason
    with store.lock(step.key):
        entry = store.get(step.key)
        if entry is not None and not ctx.nocache:
            return entry, LOCAL, "cached"
        if step.action is Action.PULL and ctx.cache_from is not None:
            pulled = _pull(ctx, step, ctx.cache_from)
            if pulled is not None:
                return pulled, f"registry {ctx.cache_from.name}", reason
            reason = f"refused from {ctx.cache_from.name}"
        with progress.activity(step.phase.label), store.writer(step.key) as tmp:
            meta = step.phase.execute(tmp)
            Store.commit_meta(tmp, {"phase": step.phase.label, "key": step.key, "image": ctx.spec.name, **meta})
        built = store.get(step.key)
        assert built is not None
        return built, BUILT, reason


def _pull(ctx: BuildRun, step: PhaseRun, remote: RegistryStore) -> Entry | None:
    """The entry pulled into the local store, every file verified; None (with the reason logged) otherwise."""
    try:
        with progress.activity(f"{step.phase.label}: pulling from {remote.name}"), \
                ctx.store.writer(step.key) as tmp:
            meta = remote.pull(step.key, tmp)
            if meta is None:
                raise _Absent
            if meta.get("phase") != step.phase.label:
                raise AssemblerError(f"the entry is a {meta.get('phase')!r} phase's, not {step.phase.label}'s")
            Store.commit_meta(tmp, meta)
    except _Absent:
        log.warning("%s %s left %s since the plan; building it", step.phase.label, step.key[:12], remote.name)
        return None
    except AssemblerError as exc:
        console.print(f"[bold yellow]refused[/] {step.phase.label} {step.key[:12]} from {remote.name}: "
                      f"{exc.brief}; building it here", highlight=False)
        if exc.details:
            console.print(f"    [dim]{exc.details}[/]", highlight=False)
        return None
    return ctx.store.get(step.key)
