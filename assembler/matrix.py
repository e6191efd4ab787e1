"""Build matrices: images x formats x providers as one plan, emitted for CI or Kubernetes, or run here.

A matrix file names the entries; the plan computes every entry's phase keys and shows which phases the
entries share (one base, rootfs, disk and boot for every format of an image). Entries share work only
through the registry store (`store:`), so they can run on separate machines: a GitHub Actions matrix, a
Kubernetes Indexed Job, or `--run --workers N` processes here, each with its own local cache. An entry
that reuses a phase another entry computes starts after it, so each shared phase is computed once.
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from assembler.errors import ConfigError
from assembler.mirrors import REGISTRY_URL

GITHUB_MAX_JOBS = 256  # a GitHub Actions matrix may generate at most 256 jobs per workflow run
JOB_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job


class EntrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    format: str = Field("raw", pattern=r"^[a-z0-9]+$")
    provider: str | None = Field(None, pattern=r"^[a-z0-9-]+$")


class Match(BaseModel):
    """An exclude rule: every field given must equal the entry's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = None
    format: str | None = None
    provider: str | None = None

    def matches(self, entry: EntrySpec) -> bool:
        return all(want is None or want == getattr(entry, name) for name, want in
                   (("image", self.image), ("format", self.format), ("provider", self.provider)))


class MatrixFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    images: list[str] = Field(default_factory=list)
    formats: list[str] = Field(default_factory=lambda: ["raw"])
    providers: list[str] = Field(default_factory=list, description="empty: build only")
    include: list[EntrySpec] = Field(default_factory=list)
    exclude: list[Match] = Field(default_factory=list)
    store: str | None = Field(None, pattern=REGISTRY_URL, description="the registry store every entry shares")
    boot_test: bool = True
    publish: dict[str, dict[str, str]] = Field(default_factory=dict,
                                               description="provider -> its options (publish --option K=V)")

    @field_validator("images")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            EntrySpec(image=name)
        return value


@dataclass(frozen=True)
class MatrixEntry:
    index: int
    image: str
    format: str
    provider: str | None

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.image, self.format, self.provider) if p)

    def fields(self) -> dict[str, str]:
        return {"image": self.image, "format": self.format, **({"provider": self.provider} if self.provider else {})}


@dataclass(frozen=True)
class EntryPlan:
    entry: MatrixEntry
    phases: tuple[tuple[str, str], ...]  # (label, key) of every phase the entry's build runs
    after: tuple[int, ...]  # entries computing a phase this one reuses: it starts once they are done
    shared: tuple[str, ...]  # labels of its phases that another entry computes (reused through the store)
    stored: tuple[str, ...] = ()  # labels of its phases already in the registry store: nobody computes them


@dataclass(frozen=True)
class MatrixPlan:
    spec: MatrixFile
    entries: tuple[EntryPlan, ...]

    def computed(self) -> int:
        """Phases computed once across the matrix (distinct keys not already in the store)."""
        return len({key for plan in self.entries for label, key in plan.phases if label not in plan.stored})

    def total(self) -> int:
        """Phases the entries would compute if each built alone."""
        return sum(len(plan.phases) for plan in self.entries)


def load(path: Path) -> MatrixFile:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the matrix file {path}: {exc.strerror}",
                          resolution="give the path of a matrix YAML file (see docs/matrix.md)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML", details=str(exc)) from exc
    try:
        return MatrixFile.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid matrix file", details=str(exc),
                          resolution="fix the fields named above (see docs/matrix.md)") from exc


def expand(spec: MatrixFile) -> list[MatrixEntry]:
    """images x formats x providers, minus exclude, plus include; in file order, each entry once."""
    providers: Sequence[str | None] = spec.providers or [None]
    combos = [EntrySpec(image=i, format=f, provider=p)
              for i, f, p in itertools.product(spec.images, spec.formats, providers)]
    kept = [c for c in combos if not any(rule.matches(c) for rule in spec.exclude)]
    seen: dict[EntrySpec, None] = dict.fromkeys([*kept, *spec.include])
    if not seen:
        raise ConfigError("the matrix has no entries", resolution="list images (and formats) or include entries")
    return [MatrixEntry(n, e.image, e.format, e.provider) for n, e in enumerate(seen)]


def make_plan(spec: MatrixFile, keys_of: Callable[[MatrixEntry], list[tuple[str, str]]],
              in_store: Callable[[str], bool] = lambda key: False) -> MatrixPlan:
    """Each entry's phases; the first entry with a key the store lacks computes it, later ones wait for it."""
    producer: dict[str, int] = {}
    plans = []
    stored_keys: dict[str, bool] = {}
    for entry in expand(spec):
        phases = tuple(keys_of(entry))
        for _, key in phases:
            if key not in stored_keys:
                stored_keys[key] = in_store(key)
        stored = tuple(label for label, key in phases if stored_keys[key])
        after = sorted({producer[key] for _, key in phases if key in producer})
        for label, key in phases:
            if label not in stored:
                producer.setdefault(key, entry.index)
        plans.append(EntryPlan(entry, phases, tuple(after), (), stored))
    users: dict[str, int] = {}
    for plan in plans:
        for _, key in plan.phases:
            users[key] = users.get(key, 0) + 1
    return MatrixPlan(spec, tuple(
        EntryPlan(p.entry, p.phases, p.after, tuple(label for label, key in p.phases if users[key] > 1), p.stored)
        for p in plans))


def commands(spec: MatrixFile, entry: MatrixEntry, out: str) -> list[list[str]]:
    """The assembler commands of one entry (the registry store comes from the environment)."""
    build = ["assembler", "build", entry.image, "--format", entry.format, "--output", f"{out}/{entry.image}"]
    if not spec.boot_test:
        build.append("--no-boot-test")
    cmds = [build]
    if entry.provider:
        publish = ["assembler", "publish", entry.image, "--provider", entry.provider, "--out", out]
        for key, value in sorted(spec.publish.get(entry.provider, {}).items()):
            publish += ["--option", f"{key}={value}"]
        cmds.append(publish)
    return cmds


def github_matrix(plan: MatrixPlan) -> dict[str, Any]:
    """What `strategy.matrix` takes (through fromJSON): one include object of strings per entry."""
    if len(plan.entries) > GITHUB_MAX_JOBS:
        raise ConfigError(f"{len(plan.entries)} entries: a GitHub Actions matrix runs at most {GITHUB_MAX_JOBS}",
                          resolution="split the matrix file, or exclude entries")
    return {"include": [{**p.entry.fields(), "name": p.entry.name} for p in plan.entries]}


def k8s_job(plan: MatrixPlan, *, name: str, image: str, parallelism: int) -> dict[str, Any]:
    """An Indexed Job: pod N runs entry N (JOB_COMPLETION_INDEX), all sharing the registry store.

    Privileged: the container engine inside the pod (dockerd), loop devices and libguestfs's appliance need
    it, and a privileged container sees the node's devices, /dev/kvm included where the node has it (without
    it the boot test runs under TCG, as on our CI). No hostPath: nothing is created on a node that lacks it.
    """
    script = ["set -eu", f'case "${JOB_INDEX}" in']
    for p in plan.entries:
        line = " && ".join(shlex.join(c) for c in commands(plan.spec, p.entry, "/work/out"))
        script.append(f"  {p.entry.index}) {line} ;;")
    script += [f'  *) echo "no matrix entry ${JOB_INDEX}" >&2; exit 2 ;;', "esac"]
    env = [{"name": "ASSEMBLER_CACHE_DIR", "value": "/work/cache"}]
    if plan.spec.store:
        env += [{"name": "ASSEMBLER_CACHE_FROM", "value": plan.spec.store},
                {"name": "ASSEMBLER_CACHE_TO", "value": plan.spec.store}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "assembler-matrix"}},
        "spec": {
            "completionMode": "Indexed",
            "completions": len(plan.entries),
            "parallelism": max(1, min(parallelism, len(plan.entries))),
            "backoffLimitPerIndex": 1,  # a failed entry is retried once; the others carry on
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "assembler-matrix"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "build",
                        "image": image,
                        "command": ["/bin/sh", "-c", "\n".join(script)],
                        "env": env,
                        "securityContext": {"privileged": True},
                        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
                        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    }],
                    "volumes": [{"name": "work", "emptyDir": {}}],
                },
            },
        },
    }


def plan_json(plan: MatrixPlan) -> list[dict[str, Any]]:
    return [{**p.entry.fields(), "name": p.entry.name, "index": p.entry.index,
             "phases": [{"phase": label, "key": key} for label, key in p.phases],
             "after": list(p.after), "shared": list(p.shared)} for p in plan.entries]


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
