"""Process lifetime: a forked worker or a spawned child never outlives a build killed with SIGKILL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from typing import IO

import pytest

from assembler.errors import DiskError, MissingToolError, ToolError
from assembler.run import run
from tests.helpers import REPO, process_alive

WORKER = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from assembler.run import die_with_parent

def work():
    print(os.getpid(), flush=True)
    time.sleep(120)

if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        pool.submit(work)
        time.sleep(120)
"""


def test_a_forked_worker_dies_with_its_killed_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert process_alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while process_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process_alive(worker), "the worker outlived its parent (it would hold the cache's locks)"
    finally:
        parent.kill()
        parent.wait()


SPAWNER = """
import subprocess, sys, time
from assembler.run import run, spawn
tied = spawn(["sleep", "120"], output=subprocess.DEVNULL)
loose = spawn(["sleep", "120"], output=subprocess.DEVNULL, tied=False, new_session=True)
print(tied.pid, loose.pid, flush=True)
run(["sleep", "120"], tied=True, check=False)
"""


def test_spawned_children_die_with_a_killed_parent_unless_untied() -> None:
    parent = subprocess.Popen([sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    loose = 0
    try:
        assert parent.stdout is not None
        tied, loose = map(int, parent.stdout.readline().split())
        time.sleep(0.5)  # the tied run() has started its sleep too
        waited = [int(p) for p in subprocess.run(["pgrep", "-P", str(parent.pid), "-x", "sleep"],
                                                 capture_output=True, text=True).stdout.split()]
        assert tied in waited and len(waited) == 3, waited  # spawn's two and run's, all direct children
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(process_alive(p) for p in waited if p != loose) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(process_alive(p) for p in waited if p != loose), "a tied child outlived its killed parent"
        assert process_alive(loose)  # a daemon started for the user (dockerd) stays
    finally:
        parent.kill()
        parent.wait()
        if loose:
            os.kill(loose, signal.SIGKILL)


def test_a_missing_tool_run_tied_is_a_missing_tool_error() -> None:
    with pytest.raises(MissingToolError, match="no-such-tool-here"):
        run(["no-such-tool-here", "--version"], tied=True)


def test_a_fed_command_reads_what_the_feeder_writes_while_it_runs() -> None:
    chunks = [bytes([i]) * 65536 for i in range(40)]  # 2.5 MiB: more than a pipe holds, so both must run at once

    def feed(out: IO[bytes]) -> None:
        for chunk in chunks:
            out.write(chunk)

    done = run(["sha256sum"], feed=feed)
    assert done.stdout.split()[0].decode() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_a_command_that_stops_reading_is_judged_by_its_exit_status() -> None:
    def endless(out: IO[bytes]) -> None:
        while True:
            out.write(b"x" * 65536)

    assert run(["head", "-c", "10"], feed=endless).stdout == b"x" * 10  # the feeder's broken pipe is no error
    with pytest.raises(ToolError):
        run(["sh", "-c", "head -c 10 >/dev/null; exit 3"], feed=endless)


def test_a_feeder_that_fails_fails_the_run() -> None:
    def broken(out: IO[bytes]) -> None:
        out.write(b"partial")
        raise DiskError("the rootfs tar ended early")

    with pytest.raises(DiskError, match="ended early"):
        run(["cat"], feed=broken)
