"""The locking proxy against a real signed apt repository on loopback and real apt-get: what it serves,
what it records, what it replays after the repository moved, and what it refuses."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from assembler.fsutil import sha256_file
from assembler.mirrors import MirrorMap
from assembler.packages import locking
from assembler.packages.bundle import collect, export, push, read_bundle
from assembler.packages.lockfile import LOCK_FILE, Lock, dumps
from assembler.packages.proxy import Session
from assembler.packages.sources import Sources
from assembler.packages.store import IntegrityError, PackageStore
from tests.integration.debrepo import DebRepo
from tests.integration.publish_servers import Server, registry  # noqa: F401 (the session's docker-registry)
from tests.integration.test_debrepo import Apt, build_deb

pytestmark = pytest.mark.integration


@dataclass
class Served:
    repo: DebRepo
    url: str
    work: Path


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    repo = DebRepo(tmp_path / "repo")
    repo.add([build_deb(tmp_path, "hello-a", "1.0"), build_deb(tmp_path, "hello-b", "1.0")])
    repo.publish()
    with repo.serve() as url:
        yield Served(repo, url, tmp_path)


def apt_through(session: Session, served: Served, name: str) -> Apt:
    apt = Apt(served.work / name, served.url, served.repo.keyring)
    conf = apt.workdir / "apt.conf"
    text = conf.read_text().replace('Acquire::http::Proxy::127.0.0.1 "DIRECT";\n', "")
    conf.write_text(text + f'Acquire::http::Proxy "{session.proxy_url}";\n')
    return apt


def session(served: Served, cache: Path, lock: Lock | None = None, *, strict: bool = False) -> Session:
    return Session("t", PackageStore(cache), Sources(MirrorMap()), [served.repo.keyring], lock=lock, strict=strict)


def resolve(served: Served, cache: Path) -> Lock:
    live = session(served, cache)
    with live.serving():
        apt = apt_through(live, served, "resolve")
        apt("update")
        live.layer = "image"
        apt("download", "hello-a")
    return live.effective_lock()


def test_a_live_session_records_every_index_and_deb_it_served(served: Served, tmp_path: Path) -> None:
    lock = resolve(served, tmp_path / "cache")
    [deb] = lock.packages
    assert (deb.name, deb.version, deb.layer) == ("hello-a", "1.0", "image")
    pool_file = next(served.repo.archive.rglob("hello-a_1.0_amd64.deb"))
    assert deb.sha256 == sha256_file(pool_file)
    assert deb.url == f"{served.url}/{pool_file.relative_to(served.repo.archive).as_posix()}"
    assert {i.url.rsplit("/", 1)[-1] for i in lock.inreleases()} == {"InRelease"}
    assert any("/by-hash/SHA256/" in i.url for i in lock.indexes)
    assert PackageStore(tmp_path / "cache").verified(deb.sha256) is not None


def test_a_moved_repository_is_replayed_from_the_store(served: Served, tmp_path: Path) -> None:
    lock = resolve(served, tmp_path / "cache")
    old, new = served.repo.bump("hello-a")
    assert served.repo.packages()["hello-a"] == new
    replay = session(served, tmp_path / "cache", lock, strict=True)
    with replay.serving():
        apt = apt_through(replay, served, "replay")
        apt("update")
        replay.layer = "image"
        apt("download", "hello-a")
    assert [p.name for p in (apt.workdir / "download").iterdir()] == [f"hello-a_{old}_amd64.deb"]
    assert replay.effective_lock().packages == lock.packages  # exactly the lock, layer included


def test_a_cold_store_and_a_moved_repository_make_a_stale_lock(served: Served, tmp_path: Path) -> None:
    lock = resolve(served, tmp_path / "cache")
    served.repo.bump("hello-a")
    store = PackageStore(tmp_path / "empty")
    started = time.monotonic()
    check = locking.check(lock, store, Sources(MirrorMap()))
    assert check.missing == ["hello-a 1.0 (amd64)"]
    assert time.monotonic() - started < 30
    context = tmp_path / "image"
    context.mkdir()
    (context / LOCK_FILE).write_text(dumps(lock))
    with pytest.raises(locking.StaleLockError) as err:
        locking.require_complete(lock, context, store)
    assert "hello-a 1.0 (amd64)" in err.value.details and "assembler lock" in err.value.resolution


def test_a_replayed_lock_prefetches_what_the_store_lacks(served: Served, tmp_path: Path) -> None:
    lock = resolve(served, tmp_path / "cache")
    [deb] = lock.packages
    store = PackageStore(tmp_path / "empty")
    replay = Session("t", store, Sources(MirrorMap()), [served.repo.keyring], lock=lock, strict=True)
    with replay.serving():
        assert replay.prefetch("base") == 0  # the lock has no base layer here
        assert replay.prefetch("image") == 1
        served.repo.requests.clear()
        apt = apt_through(replay, served, "prefetched")
        apt("update")
        replay.layer = "image"
        apt("download", "hello-a")
    assert store.verified(deb.sha256) is not None
    pool_requests = [r for r in served.repo.requests if "/pool/" in r]
    assert len(pool_requests) <= 1  # fetched once, by the prefetch or (if apt came first) by the request
    assert sha256_file(next((apt.workdir / "download").iterdir())) == deb.sha256


def test_a_prefetched_file_that_does_not_match_is_refused(served: Served, tmp_path: Path) -> None:
    lock = resolve(served, tmp_path / "cache")
    pool_file = next(served.repo.archive.rglob("hello-a_1.0_amd64.deb"))
    pool_file.write_bytes(pool_file.read_bytes() + b"tampered")
    store = PackageStore(tmp_path / "empty")
    replay = Session("t", store, Sources(MirrorMap()), [served.repo.keyring], lock=lock, strict=True)
    with replay.serving():
        replay.prefetch("image")
        apt = apt_through(replay, served, "prefetch-tampered")
        apt("update")
        replay.layer = "image"
        done = apt("download", "hello-a", check=False)
    assert done.returncode != 0 and "does not match its pinned sha256" in done.stdout + done.stderr
    assert not store.has(lock.packages[0].sha256)


def test_locked_refuses_a_package_outside_the_lock(served: Served, tmp_path: Path) -> None:
    lock = resolve(served, tmp_path / "cache")
    strict = session(served, tmp_path / "cache", lock, strict=True)
    with strict.serving():
        apt = apt_through(strict, served, "strict")
        apt("update")
        done = apt("download", "hello-b", check=False)
    assert done.returncode != 0 and "403" in done.stdout + done.stderr
    assert [r.reason for r in strict.refused] == ["hello-b 1.0 is not in the lock"]


def test_bytes_that_do_not_match_are_refused(served: Served, tmp_path: Path) -> None:
    # The mirror serves other bytes under the indexed name (Packages still names the original sha256).
    pool_file = next(served.repo.archive.rglob("hello-b_1.0_amd64.deb"))
    pool_file.write_bytes(pool_file.read_bytes() + b"tampered")
    live = session(served, tmp_path / "cache")
    with live.serving():
        apt = apt_through(live, served, "tampered")
        apt("update")
        done = apt("download", "hello-b", check=False)
    assert done.returncode != 0 and "does not match its pinned sha256" in done.stdout + done.stderr
    size = pool_file.stat().st_size
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.stat().st_size == size]


def test_a_corrupted_store_file_is_refused_and_dropped(served: Served, tmp_path: Path) -> None:
    lock = resolve(served, tmp_path / "cache")
    [deb] = lock.packages
    store = PackageStore(tmp_path / "cache")
    store.path(deb.sha256).write_bytes(b"bit rot")
    with pytest.raises(IntegrityError):
        store.verified(deb.sha256)
    assert not store.has(deb.sha256)


def test_urls_outside_an_archive_are_refused(served: Served, tmp_path: Path) -> None:
    live = session(served, tmp_path / "cache")
    with live.serving():
        apt = apt_through(live, served, "other")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": live.proxy_url}))
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open("http://example.invalid/some/file", timeout=10)
    assert err.value.code == 403 and apt.workdir.is_dir()


def test_a_bundle_carries_every_locked_file_and_refuses_tampering(served: Served, tmp_path: Path) -> None:
    lock = resolve(served, tmp_path / "cache")
    first, second = tmp_path / "a.bundle", tmp_path / "b.bundle"
    summary = export(lock, {"image": "t"}, [], tmp_path / "cache", first, Sources(MirrorMap()))
    export(lock, {"image": "t"}, [], tmp_path / "cache", second, Sources(MirrorMap()))
    assert first.read_bytes() == second.read_bytes()  # same lock, same bytes
    assert summary["blobs"] == 2 + len(lock.indexes) + len(lock.packages)
    imported = read_bundle(first, tmp_path / "fresh")
    assert imported.lock == lock and imported.inputs == {"image": "t"}
    store = PackageStore(tmp_path / "fresh")
    assert all(store.verified(i.sha256) for i in [*lock.indexes, *lock.packages])
    # Replay from the imported store alone, offline: the repository is not asked for anything.
    served.repo.requests.clear()
    offline = Session("t", store, Sources(MirrorMap(), offline=True), [served.repo.keyring], lock=lock, strict=True)
    with offline.serving():
        apt = apt_through(offline, served, "offline")
        apt("update")
        apt("download", "hello-a")
    assert served.repo.requests == []
    # One flipped byte in a blob: refused, naming the digest.
    [deb] = lock.packages
    data = bytearray(first.read_bytes())
    at = data.find(served.repo.archive.joinpath(
        deb.url.split("/debian/", 1)[1]).read_bytes()[-64:])
    data[at] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        read_bundle(first, tmp_path / "other")


def test_a_registry_shares_the_store(served: Served, tmp_path: Path, registry: Server) -> None:  # noqa: F811
    lock = resolve(served, tmp_path / "cache")
    layout = collect(lock, {"image": "t"}, [], tmp_path / "cache", Sources(MirrorMap()))
    target = f"http://127.0.0.1:{registry.port}/assembler/packages"
    ref = push(layout, target)
    assert push(layout, target) == ref  # idempotent: the second push finds every blob and the manifest
    served.repo.bump("hello-a")  # the archive moved: the locked .deb is now only in the registry
    mirrors = MirrorMap(package_registry=target)
    store = PackageStore(tmp_path / "cold")
    assert locking.check(lock, store, Sources(mirrors)).complete
    replay = Session("t", store, Sources(mirrors), [served.repo.keyring], lock=lock, strict=True)
    with replay.serving():
        apt = apt_through(replay, served, "shared")
        apt("update")
        apt("download", "hello-a")
    [deb] = lock.packages
    assert [p.name for p in (apt.workdir / "download").iterdir()] == [f"hello-a_{deb.version}_amd64.deb"]
    assert store.verified(deb.sha256) is not None


def test_an_expired_state_is_refused_live_and_replayed_when_locked(served: Served, tmp_path: Path) -> None:
    served.repo.publish(valid_for=3)
    lock = resolve(served, tmp_path / "cache")  # fresh: accepted
    assert lock.inreleases()
    time.sleep(4)
    live = session(served, tmp_path / "cache2")
    with live.serving():
        apt = apt_through(live, served, "expired")
        done = apt("update", check=False)  # apt only warns about an index it could not fetch ...
        refused = apt("download", "hello-a", check=False)  # ... and then has nothing to install from
    assert "expired" in done.stdout + done.stderr and refused.returncode != 0
    # The lock pins that (now expired) state on purpose: the session serves it; apt inside a build reads
    # the build base's Check-Valid-Until "false" (here: the same option, given on the command line).
    replay = session(served, tmp_path / "cache", lock, strict=True)
    with replay.serving():
        apt = apt_through(replay, served, "replay-expired")
        apt("-o", "Acquire::Check-Valid-Until=false", "update")
        apt("download", "hello-a")
