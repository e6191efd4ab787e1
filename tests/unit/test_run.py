"""Process lifetime: a forked worker never outlives a build killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
