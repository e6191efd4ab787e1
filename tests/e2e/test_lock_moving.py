"""A lock against an archive that moves: a real signed Debian repository on loopback, made from the real
.debs the debian-12 build fetched, where a newer version replaces a locked one and the old file is deleted.

- the locked build from a warm package store gives the same rootfs sha256 after the move (and its
  base, bootstrapped again in a fresh cache, the same image ID), after the locked state's Valid-Until;
- with an empty store, `--locked` fails in seconds naming the package and the fix, writing nothing;
- the default build re-resolves, says what changed, and records the effective lock.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from assembler.packages.lockfile import LOCK_FILE, read_lock
from assembler.packages.store import PackageStore
from tests.e2e.conftest import Built
from tests.helpers import cli, scratch_dir
from tests.integration.debrepo import DebRepo

pytestmark = pytest.mark.e2e
MOVED = "netbase"  # a small leaf of the image layer: the package the archive moves under the lock
VALID_FOR = 90.0  # the first state's Valid-Until (seconds): the replay after the move happens past it
CONTAINERFILE = f"""FROM localhost/assembler/base:lock-test
ARG SOURCE_DATE_EPOCH
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q && apt-get install -y -q --no-install-recommends {MOVED} \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/* \\
    && truncate -s 0 /etc/machine-id
"""


@dataclass
class Moving:
    repo: DebRepo
    image: Path
    root: Path
    expires: float  # when the locked InRelease's Valid-Until passes

    def build(self, cache: str, *extra: str, out: str | None = None) -> tuple[Any, dict[str, Any] | None]:
        out_dir = self.root / (out or f"out-{cache}")
        # The rootfs phase is where the lock acts (a disk needs a kernel this small image does not have; the
        # debian-12 rebuild in test_reproducible.py compares the disks of a replayed lock).
        proc = cli("build", str(self.image), "--phases", "rootfs", "--no-boot-test", "--cache-dir",
                   str(self.root / cache), "--output", str(out_dir), *extra)
        manifest = out_dir / "manifest.json"
        return proc, json.loads(manifest.read_text()) if manifest.is_file() else None


@pytest.fixture(scope="module")
def moving(debian12: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moving]:
    with scratch_dir(tmp_path_factory, "moving") as root:
        repo = DebRepo(root / "repo")
        lock = read_lock(debian12.out / "debian-12.lock.json")
        store = PackageStore(debian12.cache)
        wanted = [p for p in lock.packages if p.layer == "base" or p.name == MOVED]
        staged = root / "debs"
        staged.mkdir()
        for item in wanted:
            dest = staged / item.url.rsplit("/", 1)[-1]
            shutil.copyfile(store.path(item.sha256), dest)
        repo.add(sorted(staged.iterdir()))
        repo.publish(valid_for=VALID_FOR)
        expires = time.time() + VALID_FOR
        with repo.serve() as url:
            (root / "rootfs").mkdir()
            (root / "rootfs" / "recipe.yaml").write_text(
                f"name: lock-test\nsuite: bookworm\nvariant: minbase\nmirror: {url}\nsecurity_mirror: null\n"
                f"updates: false\npackages: [apt]\nsource_date_epoch: 1747699200\n"
                "tag: localhost/assembler/base:lock-test\n"
                f"keyrings: [{repo.keyring}]\n")
            image = root / "lock-test"
            image.mkdir()
            (image / "Containerfile").write_text(CONTAINERFILE)
            (image / "image.yaml").write_text(f"base: {root / 'rootfs'}\nsource_date_epoch: 1700000000\n"
                                              "formats: [raw]\ndisk: {size: 2G}\n")
            proc = cli("lock", str(image), "--cache-dir", str(root / "cache-a"), "--json")
            assert proc.returncode == 0, proc.stderr[-3000:]
            written = json.loads(proc.stdout)
            assert written["state"] == "written" and written["lock"] == str(image / LOCK_FILE) and written["packages"]
            assert time.time() < expires, "locking took longer than the first state's Valid-Until"
            yield Moving(repo, image, root, expires)


def test_the_lock_names_the_moved_package(moving: Moving) -> None:
    lock = read_lock(moving.image / LOCK_FILE)
    [moved] = [p for p in lock.packages if p.name == MOVED]
    assert moved.layer == "image" and moved.version == moving.repo.packages()[MOVED]


def test_locked_builds_survive_the_move_from_a_warm_store(moving: Moving) -> None:
    proc, before = moving.build("cache-a", "--locked", out="before")
    assert proc.returncode == 0 and before is not None, proc.stderr[-3000:]
    old, new = moving.repo.bump(MOVED)
    assert moving.repo.packages()[MOVED] == new
    # Replayed past the locked InRelease's Valid-Until: apt in mmdebstrap and in the RUN steps must accept it.
    time.sleep(max(0.0, moving.expires - time.time() + 1))
    # A fresh cache holding only the package store: the base is bootstrapped again, the engine builds again.
    fresh = moving.root / "cache-b"
    shutil.copytree(moving.root / "cache-a" / "packages", fresh / "packages", copy_function=os.link)
    proc, after = moving.build("cache-b", "--locked", out="after")
    assert proc.returncode == 0 and after is not None, proc.stderr[-3000:]
    assert after["rootfs"]["sha256"] == before["rootfs"]["sha256"]
    tars = [o["sha256"] for m in (before, after) for o in m["outputs"] if o["format"] == "rootfs-tar"]
    assert tars[0] == tars[1] == after["rootfs"]["sha256"]
    assert after["base_image"] == before["base_image"]
    assert after["lock"]["replayed"] and after["lock"]["changes"] == []
    assert f"{MOVED}_{old}" in json.dumps(read_lock(moving.root / "after" / "lock-test.lock.json").model_dump())


def test_locked_with_an_empty_store_fails_fast_and_writes_nothing(moving: Moving) -> None:
    if moving.repo.packages()[MOVED].endswith("+moved1") is False:
        moving.repo.bump(MOVED)
    started = time.monotonic()
    proc, manifest = moving.build("cache-empty", "--locked", out="refused")
    seconds = time.monotonic() - started
    assert proc.returncode == 1 and manifest is None
    assert seconds < 30, seconds
    assert f"{MOVED} " in proc.stdout + proc.stderr and "assembler lock" in proc.stdout + proc.stderr
    assert not (moving.root / "refused").exists()
    assert not [p for p in (moving.root / "cache-empty").rglob("*") if p.is_file()]


def test_the_default_build_re_resolves_and_reports_the_change(moving: Moving) -> None:
    if not moving.repo.packages()[MOVED].endswith("+moved1"):
        moving.repo.bump(MOVED)
    new = moving.repo.packages()[MOVED]
    proc, manifest = moving.build("cache-c", out="refreshed")
    assert proc.returncode == 0 and manifest is not None, proc.stderr[-3000:]
    assert manifest["lock"]["replayed"] is False and manifest["lock"]["missing"]
    assert any(c.startswith(f"{MOVED}:all: ") and c.endswith(new) for c in manifest["lock"]["changes"]), \
        manifest["lock"]["changes"]
    assert "differ from the committed lock" in proc.stderr + proc.stdout
    effective = read_lock(moving.root / "refreshed" / "lock-test.lock.json")
    assert {p.name: p.version for p in effective.packages}[MOVED] == new


def test_the_next_build_of_the_stale_lock_replays_its_re_resolution(moving: Moving) -> None:
    """Re-resolved once per cache: later builds of the same stale lock replay that resolution (the same
    packages and bits, and the engine's layer cache) instead of resolving the archive again, and say so."""
    if not moving.repo.packages()[MOVED].endswith("+moved1"):
        moving.repo.bump(MOVED)
    proc, first = moving.build("cache-d", out="relock-0")
    assert proc.returncode == 0 and first is not None, proc.stderr[-3000:]
    assert first["lock"]["replayed"] is False and "re-resolving against today's archive" in proc.stderr
    later = []
    for n in (1, 2):  # each a new last step, so a new rootfs key
        edited = moving.root / f"edited-{n}" / moving.image.name
        shutil.copytree(moving.image, edited)
        with (edited / "Containerfile").open("a") as handle:
            handle.write(f'LABEL edited="{n}"\n')
        proc = cli("build", str(edited), "--phases", "rootfs", "--no-boot-test", "--cache-dir",
                   str(moving.root / "cache-d"), "--output", str(moving.root / f"relock-{n}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "replaying the re-resolution" in proc.stderr
        later.append(json.loads((moving.root / f"relock-{n}" / "manifest.json").read_text()))
    for manifest in later:
        assert manifest["lock"]["replayed"] is True and manifest["lock"]["committed"] == first["lock"]["committed"]
        assert manifest["lock"]["sha256"] == first["lock"]["sha256"]  # the same effective lock, not a new one
        assert manifest["rootfs"]["sha256"] == first["rootfs"]["sha256"]  # a LABEL changes no file
    # The second replay's apt layer is the engine's cached one from the first (rebuilt: new file times).
    assert [layer["digest"] for layer in later[1]["oci"]["layers"]] == \
        [layer["digest"] for layer in later[0]["oci"]["layers"]]
