"""A build killed with SIGKILL anywhere leaves nothing that the next build takes for finished, and nothing
running; concurrent builds of one image on one cache all succeed with the same bits.

One cache (holding only the package store and the bootstrapped base of the debian-13 reference build) sees
a chain of builds, each killed at the next point: inside the engine's build, while the image is saved, while
it is flattened, while the disk is assembled, while it is converted, while QEMU boots it. After each kill the
cache must verify (every committed entry intact) and no QEMU may be left; the last build, not killed, must
give the reference build's rootfs and raw disk sha256 and reuse each phase the killed builds completed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from assembler.cache import inventory, verify
from assembler.store import Store
from tests.e2e.conftest import Built, copy_store
from tests.helpers import REPO, cli, process_alive

pytestmark = pytest.mark.e2e

ARGS = ("build", "debian-13", "--format", "raw", "--format", "qcow2")


def fresh_cache(reference: Built, path: Path) -> Path:
    copy_store(reference.cache, path)
    (path / "base").symlink_to(reference.cache / "base")  # read only by builds: bootstrapped once
    return path


def _in_tmp(cache: Path, *patterns: str) -> Callable[[str, int], bool]:
    def seen(_stderr: str, _pid: int) -> bool:
        return any(any((cache / "tmp").glob(f"*/{pattern}")) for pattern in patterns)
    return seen


def qemu_children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "qemu-system"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def build_killed_when(point: Callable[[str, int], bool], cache: Path, out: Path, log: Path,
                      timeout: float = 900) -> None:
    """Start a build, SIGKILL it (only it: its children must go by themselves) once `point` holds."""
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "assembler.cli.main", *ARGS, "--cache-dir", str(cache),
                                 "--output", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + timeout
    try:
        while not point(log.read_text(errors="replace"), proc.pid) and proc.poll() is None:
            assert time.monotonic() < deadline, f"the kill point never came:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        assert proc.poll() is None, f"the build ended before the kill point:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


POINTS: list[tuple[str, Callable[[Path], Callable[[str, int], bool]]]] = [
    ("engine build", lambda cache: lambda stderr, _pid: "step 3/" in stderr.lower()),
    ("save", lambda cache: _in_tmp(cache, "image.tar")),
    ("flatten", lambda cache: _in_tmp(cache, "rootfs.tar", ".rootfs.tar*")),
    ("disk", lambda cache: _in_tmp(cache, "*disk.raw*", ".*disk.raw*")),
    ("convert", lambda cache: _in_tmp(cache, "*.qcow2*", ".*qcow2*")),
]


def test_sigkill_in_every_phase_then_the_next_build_succeeds_with_the_same_bits(
        debian13: Built, tmp_path: Path) -> None:
    cache = fresh_cache(debian13, tmp_path / "cache")
    out = tmp_path / "out"
    for name, point in POINTS:
        build_killed_when(point(cache), cache, out, tmp_path / f"{name}.log")
        entries, _, problems = verify(Store(cache))
        assert not problems, f"after a kill in {name}: {problems}"
        print(f"killed in {name}: {entries} complete entries kept")
    # The boot: QEMU is a child of the build; killing the build must take it along (no orphan guest).
    holder: dict[str, int] = {}

    def booting(_stderr: str, pid: int) -> bool:
        guests = qemu_children(pid)
        if guests:
            holder["qemu"] = guests[0]
        return bool(guests)

    build_killed_when(booting, cache, out, tmp_path / "boot.log")
    deadline = time.monotonic() + 15
    while process_alive(holder["qemu"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_alive(holder["qemu"]), "QEMU outlived the killed build"
    assert not verify(Store(cache))[2]

    proc = cli(*ARGS, "--no-boot-test", "--cache-dir", str(cache), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    cached = {p["name"]: p["cached"] for p in manifest["phases"]}
    assert cached == {"rootfs": True, "disk": True, "convert:qcow2": True}, cached
    assert manifest["rootfs"]["sha256"] == debian13.manifest["rootfs"]["sha256"]
    raw = {o["format"]: o["sha256"] for o in manifest["outputs"]}["raw"]
    assert raw == {o["format"]: o["sha256"] for o in debian13.manifest["outputs"]}["raw"]
    assert not [p for p in (cache / "tmp").iterdir() if not p.name.endswith(".lock")]  # orphans removed


@pytest.mark.parametrize("builds", [2, 4])
def test_concurrent_builds_of_one_image_on_one_cache_all_succeed(
        debian13: Built, tmp_path: Path, builds: int) -> None:
    cache = fresh_cache(debian13, tmp_path / "cache")

    def one(n: int) -> dict:  # type: ignore[type-arg]
        out = tmp_path / f"out-{n}"
        proc = cli("build", "debian-13", "--phases", "rootfs,disk", "--no-boot-test", "--format", "raw",
                   "--cache-dir", str(cache), "--output", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "manifest.json").read_text())  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=builds) as pool:
        manifests = list(pool.map(one, range(builds)))
    raws = {next(o["sha256"] for o in m["outputs"] if o["format"] == "raw") for m in manifests}
    assert raws == {next(o["sha256"] for o in debian13.manifest["outputs"] if o["format"] == "raw")}
    assert len({m["rootfs"]["sha256"] for m in manifests}) == 1
    phases = sorted(e.phase for e in inventory(Store(cache)).entries)
    assert phases == ["disk", "rootfs"], phases  # each built once: the others waited for it and reused it
    assert not verify(Store(cache))[2]
