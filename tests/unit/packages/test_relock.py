"""A stale committed lock is re-resolved once per cache; later builds replay that resolution while the store
still serves every file of it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from assembler.packages import locking
from assembler.packages.lockfile import LOCK_FILE, Lock, LockedPackage, write_lock
from assembler.packages.store import PackageStore

DEAD = "http://127.0.0.1:9/debian"  # nothing listens: a HEAD probe is refused at once, no network


def _pkg(name: str, data: bytes) -> LockedPackage:
    return LockedPackage(name=name, version="1", architecture="amd64", layer="image",
                         url=f"{DEAD}/pool/main/{name[0]}/{name}/{name}_1_amd64.deb", size=len(data),
                         sha256=hashlib.sha256(data).hexdigest())


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("ASSEMBLER_MIRRORS", raising=False)  # no mirror map: the locked URLs as they are
    monkeypatch.setenv("HOME", str(tmp_path))
    context = tmp_path / "img"
    context.mkdir()
    write_lock(context / LOCK_FILE, Lock(image="img", packages=(_pkg("gone", b"a version the mirror dropped"),)))
    return context


def _session(image: Path, cache: Path) -> tuple[Lock | None, list[str]]:
    session, missing = locking.session_for("img", image, cache, [])
    return session.lock, missing


def test_a_stale_lock_replays_the_resolution_an_earlier_build_kept(image: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    lock, missing = _session(image, cache)
    assert lock is None and missing  # the first build re-resolves
    data = b"what today's archive served"
    PackageStore(cache).put(hashlib.sha256(data).hexdigest(), [data], what="t", where="t")
    effective = Lock(image="img", packages=(_pkg("today", data),))
    committed = locking.read_image_lock(image)
    assert committed is not None
    locking.remember_relock(cache, "img", committed, effective)
    lock, missing = _session(image, cache)
    assert lock == effective and missing  # still reported: the committed lock itself stays stale


def test_a_relock_the_store_cannot_serve_or_that_is_damaged_is_not_replayed(image: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    committed = locking.read_image_lock(image)
    assert committed is not None
    locking.remember_relock(cache, "img", committed, Lock(image="img", packages=(_pkg("absent", b"x"),)))
    assert _session(image, cache)[0] is None
    locking.relock_path(cache, "img", committed).write_text('{"version": 1, "image": ')
    assert _session(image, cache)[0] is None


def test_a_relock_belongs_to_one_committed_lock(image: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    other = Lock(image="img", packages=(_pkg("other", b"another committed lock"),))
    assert locking.relock_path(cache, "img", other) != locking.relock_path(
        cache, "img", locking.read_image_lock(image) or other)
