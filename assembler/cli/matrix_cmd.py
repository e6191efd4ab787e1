"""`assembler matrix FILE`: the plan of a build matrix, emitted for GitHub Actions or Kubernetes, or run here."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml

from assembler.errors import AssemblerError, ConfigError

if TYPE_CHECKING:
    from assembler.matrix import MatrixPlan


class Emit(enum.StrEnum):
    PLAN = "plan"
    GITHUB = "github"
    K8S = "k8s"


def matrix(
    file: Path = typer.Argument(..., help="matrix YAML: images, formats, providers, include, exclude, store"),
    emit: Emit = typer.Option(Emit.PLAN, "--emit", help="plan (table), github (strategy.matrix JSON) or "
                              "k8s (an Indexed Job manifest, YAML)"),
    as_json: bool = typer.Option(False, "--json", help="the plan as JSON on stdout"),
    run: bool = typer.Option(False, "--run", help="run the entries here, --workers processes sharing only the "
                             "registry store"),
    workers: int = typer.Option(2, "--workers", min=1, max=64, help="worker processes (--run) / pods at once (k8s)"),
    workdir: Path = typer.Option(Path("out/matrix"), "--workdir", help="--run: each worker's cache, the outputs, "
                                 "the logs and matrix.json"),
    store: str | None = typer.Option(None, "--store", envvar="ASSEMBLER_CACHE_TO",
                                     help="the registry store (default: the file's store:)"),
    job_image: str = typer.Option("localhost/assembler:latest", "--job-image",
                                  help="k8s: the container image with assembler and its tools"),
    job_name: str = typer.Option("assembler-matrix", "--job-name", help="k8s: the Job's name"),
) -> None:
    """Plan a build matrix; show the phases its entries share; emit it for CI or run it here."""
    from assembler import matrix as matrix_mod
    from assembler.config import cache_dir, resolve_image
    from assembler.formats import validate_format_names
    from assembler.log import console
    from assembler.pipeline import BuildRun
    from assembler.store import Store

    spec = matrix_mod.load(file)
    if store:
        spec = matrix_mod.MatrixFile.model_validate({**spec.model_dump(), "store": store})
    local = Store(cache_dir(None))

    def keys_of(entry: matrix_mod.MatrixEntry) -> list[tuple[str, str]]:
        from assembler.build import plan_build

        image = resolve_image(entry.image)
        ctx = BuildRun(spec=image, store=local, output_dir=Path("out") / image.name,
                           formats=validate_format_names([entry.format]), boot_test=spec.boot_test)
        return [(step.phase.label, step.key) for step in plan_build(ctx)]  # the keys a worker's build computes

    from assembler.remote import RegistryStore

    # What the store holds matters to the plan shown and run here; an emitted matrix is the same either way.
    remote = RegistryStore(spec.store) if spec.store and emit is Emit.PLAN else None

    def in_store(key: str) -> bool:
        return remote is not None and remote.lookup(key) is not None

    plan = matrix_mod.make_plan(spec, keys_of, in_store)
    if emit is Emit.GITHUB:
        typer.echo(json.dumps(matrix_mod.github_matrix(plan)))
        return
    if emit is Emit.K8S:
        job = matrix_mod.k8s_job(plan, name=job_name, image=job_image, parallelism=workers)
        typer.echo(yaml.safe_dump(job, sort_keys=False, width=1000))
        return
    if as_json and not run:
        typer.echo(json.dumps(matrix_mod.plan_json(plan), indent=2))
        return
    _print_plan(plan)
    if not run:
        return
    if not spec.store:
        raise ConfigError("--run needs a registry store: the entries share work only through it",
                          resolution="set store: in the matrix file, or pass --store http(s)://HOST[:PORT]/REPO")
    from assembler.fsutil import write_json
    from assembler.matrix_run import run_matrix

    results = run_matrix(plan, workdir, workers, spec.store)
    report = {"workers": workers, "store": spec.store, "computed_once": plan.computed(),
              "built": sum(len(r.built) for r in results), "entries": [vars(r) for r in results]}
    write_json(workdir / "matrix.json", report)
    console.print(f"{len(results)} entries, {report['built']} phases built (the plan: {plan.computed()} "
                  f"distinct), report {workdir / 'matrix.json'}")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    failed = [r for r in results if r.returncode != 0]
    if failed:
        raise AssemblerError(f"{len(failed)} matrix entries failed: {', '.join(r.name for r in failed)}",
                          resolution="read their logs: " + ", ".join(r.log for r in failed))


def _print_plan(plan: MatrixPlan) -> None:
    from rich.table import Table

    from assembler.log import console

    table = Table("#", "entry", "phases (* shared with another entry, = in the store)", "after", title="matrix plan")
    for p in plan.entries:
        shown = [f"{label}{'*' if label in p.shared else ''}{'=' if label in p.stored else ''} {key[:8]}"
                 for label, key in p.phases]
        table.add_row(str(p.entry.index), p.entry.name, ", ".join(shown), ", ".join(map(str, p.after)) or "-")
    console.print(table)
    console.print(f"{len(plan.entries)} entries: {plan.computed()} phases to compute, each once "
                  f"({plan.total()} if each entry built alone and nothing were in the store)")
