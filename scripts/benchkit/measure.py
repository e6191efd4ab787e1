"""Timing one command alone: wall time, peak memory of its process tree, disk growth, its log."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository: disk growth is measured on its filesystem
MIB = 1024 * 1024

@dataclass
class Sample:
    """One timed command: wall seconds, peak memory, disk growth, exit code and where its log is."""
    label: str
    seconds: float
    rc: int
    peak_pss_mib: float
    peak_rss_single_mib: float
    disk_peak_growth_mib: float
    log: str
    extra: dict[str, Any] = field(default_factory=dict)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) for every process, read from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        table[int(entry)] = (ppid, comm)
    return table


def _descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB; PSS splits shared pages between their users, so a sum over processes is fair."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


def _used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class Sampler(threading.Thread):
    """Samples, every `interval` s, the memory of a command's process tree and the filesystem's used space.

    With `engine=True` it also counts processes under containerd shims that appear during the run (the build
    containers run there, not under our child) and the growth of dockerd/containerd themselves.
    """

    def __init__(self, pid: int, engine: bool, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.engine, self.interval = pid, engine, interval
        self.stop = threading.Event()
        self.peak_pss = self.peak_rss_single = 0
        self.disk_start = self.disk_peak = _used_bytes(ROOT)
        table = _proc_table()
        self.old_shims = {p for p, (_, c) in table.items() if c.startswith("containerd-shim")}
        self.daemons = {p for p, (_, c) in table.items() if c in ("dockerd", "containerd")}
        self.daemon_base = sum(_memory_kib(p)[0] for p in self.daemons)

    def sample(self) -> None:
        table = _proc_table()
        roots = {self.pid}
        if self.engine:
            roots |= {p for p, (_, c) in table.items() if c.startswith("containerd-shim") and p not in self.old_shims}
        total = 0
        for pid in _descendants(roots, table):
            pss, rss = _memory_kib(pid)
            total += pss
            self.peak_rss_single = max(self.peak_rss_single, rss)
        if self.engine:
            total += max(0, sum(_memory_kib(p)[0] for p in self.daemons) - self.daemon_base)
        self.peak_pss = max(self.peak_pss, total)
        self.disk_peak = max(self.disk_peak, _used_bytes(ROOT))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def _pump(stream: Any, sink: Any, started: float) -> None:
    """Copy a child's stderr to its log with elapsed-time stamps (they attribute time to sub-steps)."""
    for raw in iter(stream.readline, b""):
        sink.write(f"[{time.monotonic() - started:8.2f}] ".encode() + raw)
        sink.flush()


def measure(label: str, cmd: list[Any], logdir: Path, *, env: dict[str, str] | None = None,
            cwd: Path | None = None, engine: bool = False, timeout: float = 3600,
            stdout_file: Path | None = None) -> Sample:
    """Run cmd alone and measure it. stdout goes to stdout_file (or the log), stderr to the log."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.log"
    say(f"  run {label}: {' '.join(map(str, cmd))[:160]}")
    with log.open("wb") as sink, (stdout_file or log).open("ab" if stdout_file is None else "wb") as out:
        sink.write(f"$ {' '.join(map(str, cmd))}\n".encode())
        sink.flush()
        started = time.monotonic()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out if stdout_file else sink,
                                stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
        sampler = Sampler(proc.pid, engine)
        sampler.start()
        pump = threading.Thread(target=_pump, args=(proc.stderr, sink, started), daemon=True)
        pump.start()
        try:
            rc = proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        finally:
            seconds = time.monotonic() - started
            sampler.stop.set()
            sampler.join()
            pump.join(timeout=5)
    sample = Sample(label, round(seconds, 2), rc, round(sampler.peak_pss / 1024, 1),
                    round(sampler.peak_rss_single / 1024, 1),
                    round((sampler.disk_peak - sampler.disk_start) / MIB, 1), str(log))
    say(f"    -> {sample.seconds:.1f} s rc={rc} peak {sample.peak_pss_mib:.0f} MiB "
        f"disk +{sample.disk_peak_growth_mib:.0f} MiB")
    return sample


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def du_mib(*paths: Path) -> float:
    total = 0
    for path in paths:
        if path.exists():
            out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True)
            total += int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0
    return round(total / MIB, 1)


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None
