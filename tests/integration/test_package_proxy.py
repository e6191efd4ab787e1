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
from assembler.packages.lockfile import LOCK_FILE, Lock, dumps
from assembler.packages.proxy import Session
from assembler.packages.sources import Sources
from assembler.packages.store import IntegrityError, PackageStore
from tests.integration.debrepo import DebRepo
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
