"""The phase store survives crashes and races (issue 13, item 4)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from assembler.store import Store

KEY = "ab" * 32


def commit(store: Store, key: str, payload: bytes) -> None:
    with store.lock(key), store.writer(key) as tmp:
        (tmp / "artefact.bin").write_bytes(payload)
        Store.commit_meta(tmp, {"phase": "t", "key": key})


def test_a_changed_or_truncated_entry_is_not_reused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    commit(store, KEY, b"x" * 100)
    entry = store.get(KEY)
    assert entry is not None and entry.file("artefact.bin").read_bytes() == b"x" * 100
    with entry.file("artefact.bin").open("r+b") as handle:
        handle.truncate(10)
    assert store.get(KEY) is None  # reported absent: the plan builds it again
    assert not store.object_dir(KEY).exists()


def test_replacing_an_entry_never_leaves_a_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    commit(store, KEY, b"old")
    real_replace, calls = os.replace, []

    def crash_on_second(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        commit(store, KEY, b"new")
    monkeypatch.undo()
    entry = store.get(KEY)
    assert entry is None or entry.file("artefact.bin").read_bytes() in (b"old", b"new")
    commit(store, KEY, b"new")
    entry = store.get(KEY)
    assert entry is not None and entry.file("artefact.bin").read_bytes() == b"new"
    store.clean_stale()  # the old entry, renamed aside when the kill came, goes too
    assert [p.name for p in store.object_dir(KEY).parent.iterdir()] == [KEY]


def test_orphans_of_killed_builds_are_removed_and_running_ones_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    orphan = tmp_path / "tmp" / "0123456789ab.killed"
    (orphan / "disk").mkdir(parents=True)
    (orphan / "disk" / "disk.raw").write_bytes(b"\0" * 4096)
    with store.scratch("running") as running:
        (running / "partial").write_text("in progress")
        removed = store.clean_stale()
        assert removed == [orphan] and running.is_dir()
    assert not orphan.exists() and list((tmp_path / "tmp").iterdir()) == []


def test_concurrent_ref_updates_do_not_collide(tmp_path: Path) -> None:
    store = Store(tmp_path)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(50):
                store.set_ref("img", "rootfs", f"{n:02d}{i:062d}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(store.ref("img", "rootfs") or "") == 64
