"""`assembler cache`: inventory, verification against recorded digests, and gc that spares entries in use."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assembler import cache
from assembler.packages.store import PackageStore
from assembler.store import Store
from tests.helpers import cli


def _entry(store: Store, key: str, phase: str, payload: bytes, *, age_days: float = 0) -> Path:
    with store.writer(key) as tmp:
        (tmp / "rootfs.tar").write_bytes(payload)
        digest = hashlib.sha256(payload).hexdigest()
        Store.commit_meta(tmp, {"phase": phase, "key": key, "image": "img",
                                "rootfs": {"path": "rootfs.tar", "sha256": digest}})
    meta = store.object_dir(key) / "meta.json"
    used = time.time() - age_days * 86400
    os.utime(meta, (used, used))
    return store.object_dir(key)


def _key(n: int) -> str:
    return f"{n:02x}" * 32


def test_ls_lists_entries_newest_use_first_with_sizes_and_the_package_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _entry(store, _key(1), "rootfs", b"a" * 10000, age_days=3)
    _entry(store, _key(2), "disk", b"b" * 5000, age_days=1)
    PackageStore(tmp_path).put(hashlib.sha256(b"deb").hexdigest(), [b"deb"], what="t", where="t")
    inv = cache.inventory(store)
    assert [(e.key, e.phase, e.image) for e in inv.entries] == [(_key(2), "disk", "img"), (_key(1), "rootfs", "img")]
    assert inv.entries[1].bytes >= 10000 and inv.package_files == 1
    assert inv.total >= 15000
    Store(tmp_path).get(_key(1))  # a build using it: last use moves
    assert cache.inventory(Store(tmp_path)).entries[0].key == _key(1)


def test_verify_finds_a_changed_entry_and_a_corrupt_package(tmp_path: Path) -> None:
    store = Store(tmp_path)
    good = _entry(store, _key(1), "rootfs", b"good")
    bad = _entry(store, _key(2), "rootfs", b"data")
    assert cache.verify(store) == (2, 2, [])
    stat = (bad / "rootfs.tar").stat()
    (bad / "rootfs.tar").write_bytes(b"DATA")  # same size, same mtime restored: only the digest tells
    os.utime(bad / "rootfs.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    packages = PackageStore(tmp_path)
    sha = hashlib.sha256(b"deb").hexdigest()
    packages.put(sha, [b"deb"], what="t", where="t")
    packages.path(sha).write_bytes(b"bit rot")
    entries, hashed, problems = cache.verify(store)
    assert (entries, hashed) == (2, 3)
    assert [(p.what, p.why.split(" ")[0]) for p in problems] == [
        (f"entry {_key(2)[:12]} (rootfs)", "rootfs.tar"), (f"package {sha[:12]}", "its")]
    assert good.exists() and bad.exists()  # verify reads, never repairs


def test_gc_by_age_and_by_size_removes_the_least_recently_used(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for n, age in ((1, 40), (2, 20), (3, 1)):
        _entry(store, _key(n), "rootfs", bytes([n]) * 100_000, age_days=age)
    planned, _ = cache.gc(store, older_than=30 * 86400, dry_run=True)
    assert [r.entry.key for r in planned] == [_key(1)] and store.object_dir(_key(1)).exists()
    removed, busy = cache.gc(store, older_than=30 * 86400)
    assert [r.entry.key for r in removed] == [_key(1)] and not busy
    assert not store.object_dir(_key(1)).exists() and store.object_dir(_key(2)).exists()
    removed, _ = cache.gc(store, keep_bytes=150_000)
    assert [r.entry.key for r in removed] == [_key(2)]
    assert [e.key for e in cache.inventory(store).entries] == [_key(3)]
    assert not list((tmp_path / "objects").glob("*/.*"))  # nothing renamed aside is left


def test_gc_never_removes_an_entry_a_running_build_uses(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _entry(store, _key(1), "rootfs", b"x" * 1000, age_days=90)
    _entry(store, _key(2), "disk", b"y" * 1000, age_days=90)
    holder = subprocess.Popen(  # another process that got the entry, as a build's plan does
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from assembler.store import Store; "
         f"assert Store(Path({str(tmp_path)!r})).get({_key(1)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        removed, busy = cache.gc(Store(tmp_path), keep_bytes=0)  # its use made it recent: only size makes it go
        assert [r.entry.key for r in removed] == [_key(2)] and [e.key for e in busy] == [_key(1)]
        assert store.object_dir(_key(1)).exists()
    finally:
        holder.kill()
        holder.wait()
    removed, busy = cache.gc(Store(tmp_path), keep_bytes=0)
    assert [r.entry.key for r in removed] == [_key(1)] and not busy


def test_gc_removes_what_killed_builds_left(tmp_path: Path) -> None:
    orphan = tmp_path / "tmp" / "abc.x1"
    orphan.mkdir(parents=True)
    (orphan / "disk.raw").write_bytes(b"half")
    (tmp_path / "tmp" / "abc.x1.lock").write_text("")
    cache.gc(Store(tmp_path), older_than=86400)
    assert not orphan.exists()


@pytest.mark.parametrize("text", ["30d", "12h", "90m", "2w", "45s"])
def test_durations(text: str) -> None:
    assert cache.parse_duration(text) > 0


def test_cache_cli(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _entry(store, _key(1), "rootfs", b"z" * 4096, age_days=10)
    listed = cli("cache", "ls", "--json", "--cache-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert [e["key"] for e in json.loads(listed.stdout)["entries"]] == [_key(1)]
    assert cli("cache", "verify", "--cache-dir", str(tmp_path)).returncode == 0
    for bad in (["--older-than", "soon"], ["--keep-bytes", "-5G"], []):
        proc = cli("cache", "gc", "--cache-dir", str(tmp_path), *bad)
        assert proc.returncode == 1 and "fix:" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    proc = cli("cache", "gc", "--older-than", "7d", "--cache-dir", str(tmp_path))
    assert proc.returncode == 0 and "removed 1 entries" in proc.stdout + proc.stderr
    assert not store.object_dir(_key(1)).exists()


def test_cache_verify_and_gc_speak_json(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _entry(store, _key(1), "rootfs", b"y" * 4096, age_days=10)
    bad = _entry(store, _key(2), "disk", b"x" * 4096, age_days=1)
    verified = cli("cache", "verify", "--json", "--cache-dir", str(tmp_path))
    assert verified.returncode == 0 and json.loads(verified.stdout) == {"entries": 2, "files_hashed": 2,
                                                                         "problems": []}
    (bad / "rootfs.tar").write_bytes(b"short")
    damaged = cli("cache", "verify", "--json", "--cache-dir", str(tmp_path))
    assert damaged.returncode == 1
    assert [p["what"] for p in json.loads(damaged.stdout)["problems"]] == [f"entry {_key(2)[:12]} (disk)"]
    dry = cli("cache", "gc", "--older-than", "7d", "--dry-run", "--json", "--cache-dir", str(tmp_path))
    report = json.loads(dry.stdout)
    assert dry.returncode == 0 and report["dry_run"] and [r["key"] for r in report["removed"]] == [_key(1)]
    assert report["removed"][0]["reason"] and store.object_dir(_key(1)).exists()


def test_gc_keeps_the_layer_indexes_entries_name_and_drops_the_rest(tmp_path: Path) -> None:
    from assembler.rootfs.layers import FileEntry, Layer, LayerCache

    store = Store(tmp_path)
    kept, dropped = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    with store.writer(_key(1)) as tmp:
        Store.commit_meta(tmp, {"phase": "rootfs", "key": _key(1), "image": "img",
                                "oci": {"digest": "x", "layers": [{"digest": kept, "step": "RUN x"}]}})
    layers = LayerCache(tmp_path)
    for diff_id in (kept, dropped):
        layers.put(Layer(0, diff_id, "", (FileEntry("etc", "dir", 0o755, 0, 0, 0),)))
    (layers.root / "v0-old").mkdir()  # an index format this version does not read
    assert cache.inventory(store).layer_index_bytes > 0
    cache.gc(store, older_than=365 * 86400, dry_run=True)
    assert len(list(layers.dir.glob("*.json"))) == 2  # a dry run removes nothing
    cache.gc(store, older_than=365 * 86400)
    assert [p.name for p in layers.root.iterdir()] == [layers.dir.name]
    assert layers.get(kept, 3, "RUN x") is not None and layers.get(dropped, 0, "") is None
