"""Plan and execution against the store, with small in-memory phases (no engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from assembler.config import ImageConfig, ImageSpec
from assembler.pipeline import Action, BuildRun, Phase, execute_plan, make_plan
from assembler.store import Store


class Writes(Phase):
    name = "rootfs"
    kind = "rootfs"

    def __init__(self, ctx: BuildRun, inputs: tuple[Phase, ...] = (), text: str = "x",
                 fail: bool = False) -> None:
        super().__init__(ctx, inputs)
        self.text = text
        self.fail = fail
        self.runs = 0

    def material(self) -> dict[str, Any]:
        return {"text": self.text}

    def execute(self, out: Path) -> dict[str, Any]:
        self.runs += 1
        (out / "a.txt").write_text(self.text)
        if self.fail:
            raise RuntimeError("boom")
        return {"len": len(self.text)}


class Reads(Writes):
    name = "disk"
    kind = "disk"

    def execute(self, out: Path) -> dict[str, Any]:
        self.runs += 1
        upstream = self.input_entry("rootfs").file("a.txt").read_text()
        (out / "b.txt").write_text(upstream.upper())
        return {}


@pytest.fixture
def ctx(tmp_path: Path) -> BuildRun:
    spec = ImageSpec(name="img", context=tmp_path, containerfile=tmp_path / "Containerfile", config=ImageConfig())
    return BuildRun(spec=spec, store=Store(tmp_path / "cache"), output_dir=tmp_path / "out", formats=["raw"])


def test_first_run_builds_second_reuses(ctx: BuildRun) -> None:
    first = Writes(ctx, text="hello")
    second = Reads(ctx, (first,))
    plan = make_plan(ctx, [first, second])
    assert [(s.action, s.reason) for s in plan] == [(Action.RUN, "not built before")] * 2
    execute_plan(ctx, plan)
    assert ctx.results["disk"].file("b.txt").read_text() == "HELLO"

    again = make_plan(ctx, [Writes(ctx, text="hello"), Reads(ctx, (Writes(ctx, text="hello"),))])
    assert [(s.action, s.reason) for s in again] == [(Action.CACHED, "cached")] * 2


def test_changed_input_changes_downstream_key(ctx: BuildRun) -> None:
    first = Writes(ctx, text="one")
    execute_plan(ctx, make_plan(ctx, [first, Reads(ctx, (first,))]))
    changed = Writes(ctx, text="two")
    plan = make_plan(ctx, [changed, Reads(ctx, (changed,))])
    assert [(s.action, s.reason) for s in plan] == [(Action.RUN, "inputs changed")] * 2


def test_failure_leaves_no_entry(ctx: BuildRun) -> None:
    phase = Writes(ctx, text="bad", fail=True)
    plan = make_plan(ctx, [phase])
    with pytest.raises(RuntimeError):
        execute_plan(ctx, plan)
    assert ctx.store.get(plan[0].key) is None
    assert list((ctx.store.root / "tmp").iterdir()) == []


def test_selection_runs_needed_inputs_and_skips_the_rest(ctx: BuildRun) -> None:
    first = Writes(ctx, text="sel")
    second = Reads(ctx, (first,))
    plan = make_plan(ctx, [first, second], selected={"rootfs"})
    assert [s.action for s in plan] == [Action.RUN, Action.SKIP]
    plan = make_plan(ctx, [first, second], selected={"disk"})
    assert plan[0].reason.endswith("needed by a selected phase")
    assert plan[1].action is Action.RUN


def test_no_cache_reruns(ctx: BuildRun) -> None:
    phase = Writes(ctx, text="n")
    execute_plan(ctx, make_plan(ctx, [phase]))
    ctx.nocache = True
    plan = make_plan(ctx, [phase])
    assert plan[0].action is Action.RUN
    execute_plan(ctx, plan)
    assert phase.runs == 2
