"""`assembler matrix FILE --run --workers N`: the matrix's entries run here by N worker processes.

Each worker is what one machine of a CI matrix would be: its own cache directory, the registry store as
the only thing it shares. Workers take entries in plan order; an entry that reuses a phase another entry
computes starts after that entry has finished (and pushed), so it pulls the phase instead of computing it
again. Every command runs in its own process, tied to this one (it dies when we die); Ctrl-C or an error
stops the running entries before returning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from assembler.log import console
from assembler.matrix import EntryPlan, MatrixFile, MatrixPlan, commands
from assembler.run import spawn

POLL = 0.2


@dataclass
class EntryResult:
    name: str
    index: int
    worker: int
    returncode: int
    seconds: float
    log: str
    built: list[str] = field(default_factory=list)  # phases this entry computed
    pulled: list[str] = field(default_factory=list)  # phases it took from the registry store


@dataclass
class _Slot:
    worker: int
    plan: EntryPlan
    todo: list[list[str]]
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float


def _argv(cmd: list[str]) -> list[str]:
    assert cmd[0] == "assembler"
    return [sys.executable, "-m", "assembler.cli.main", *cmd[1:]]  # this assembler, whatever PATH holds


def _start(cmd: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    log.write(f"$ {' '.join(cmd)}\n".encode())
    log.flush()
    return spawn(_argv(cmd), env=env, output=log)


def run_matrix(plan: MatrixPlan, workdir: Path, workers: int, store: str) -> list[EntryResult]:
    """Run every entry; the results in entry order (a failed entry has a non-zero returncode)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    pending = list(plan.entries)
    finished: dict[int, EntryResult] = {}
    running: dict[int, _Slot] = {}
    try:
        while pending or running:
            for worker in range(workers):
                if worker in running:
                    continue
                ready = next((p for p in pending if set(p.after) <= set(finished)), None)
                if ready is None:
                    break
                pending.remove(ready)
                running[worker] = _launch(plan.spec, ready, worker, workdir, store)
            time.sleep(POLL)
            for worker, slot in list(running.items()):
                code = slot.proc.poll()
                if code is None:
                    continue
                if code == 0 and slot.todo:
                    slot.proc = _start(slot.todo.pop(0), _env(workdir, worker, store), slot.log)
                    continue
                del running[worker]
                slot.log.close()
                finished[slot.plan.entry.index] = _result(slot, code, workdir)
                verb = "[green]done[/]" if code == 0 else f"[red]failed ({code})[/]"
                console.print(f"  {verb} {slot.plan.entry.name} on worker {worker} "
                              f"({finished[slot.plan.entry.index].seconds:.0f} s)")
    finally:
        for slot in running.values():  # interrupted: nothing keeps running behind the user's back
            slot.proc.send_signal(signal.SIGINT)
        for slot in running.values():
            try:
                slot.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                slot.proc.wait()
            slot.log.close()
    return [finished[p.entry.index] for p in plan.entries]


def _env(workdir: Path, worker: int, store: str) -> dict[str, str]:
    env = {**os.environ, "ASSEMBLER_CACHE_DIR": str(workdir / f"worker-{worker}" / "cache")}
    env["ASSEMBLER_CACHE_FROM"] = env["ASSEMBLER_CACHE_TO"] = store
    return env


def _out(workdir: Path, plan: EntryPlan) -> Path:
    return workdir / "out" / str(plan.entry.index)


def _launch(spec: MatrixFile, plan: EntryPlan, worker: int, workdir: Path, store: str) -> _Slot:
    console.print(f"  [cyan]start[/] {plan.entry.name} on worker {worker}"
                  + (f" (after {', '.join(map(str, plan.after))})" if plan.after else ""))
    todo = commands(spec, plan.entry, str(_out(workdir, plan)))
    log = (workdir / "logs" / f"{plan.entry.index}.log").open("wb")
    proc = _start(todo.pop(0), _env(workdir, worker, store), log)
    return _Slot(worker, plan, todo, proc, log, time.monotonic())


def _result(slot: _Slot, code: int, workdir: Path) -> EntryResult:
    entry = slot.plan.entry
    result = EntryResult(entry.name, entry.index, slot.worker, code, round(time.monotonic() - slot.started, 1),
                         str(workdir / "logs" / f"{entry.index}.log"))
    manifest = _out(workdir, slot.plan) / entry.image / "manifest.json"
    try:
        phases = json.loads(manifest.read_text())["phases"]
    except (OSError, ValueError, KeyError):
        return result
    for phase in phases if isinstance(phases, list) else []:
        if isinstance(phase, dict):
            source = str(phase.get("source", ""))
            (result.built if source == "built" else result.pulled).append(str(phase.get("name")))
    return result
