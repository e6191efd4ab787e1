"""The lock file format, lock changes, the shipped locks, and the archive index parsers."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import pytest

from assembler.errors import ConfigError
from assembler.packages import index
from assembler.packages.lockfile import (
    LOCK_FILE,
    IndexFile,
    LockedPackage,
    changes,
    dumps,
    make_lock,
    read_lock,
    write_lock,
)
from assembler.packages.store import IntegrityError, PackageStore
from tests.helpers import REPO

SHA_A, SHA_B = "a" * 64, "b" * 64


def pkg(name: str, version: str, layer: str = "image", sha: str = SHA_A) -> LockedPackage:
    return LockedPackage(name=name, version=version, architecture="amd64", layer=layer,  # type: ignore[arg-type]
                         url=f"http://deb.debian.org/debian/pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb",
                         size=10, sha256=sha)


def test_roundtrip_is_canonical_and_one_line_per_entry(tmp_path: Path) -> None:
    inrelease = IndexFile(url="http://deb.debian.org/debian/dists/bookworm/InRelease", sha256=SHA_B, size=3,
                          date="Sat, 11 Jul 2026 10:16:37 UTC")
    lock = make_lock("x", [inrelease], [pkg("zsh", "5"), pkg("bash", "5.2", "base")])
    assert [p.name for p in lock.packages] == ["bash", "zsh"]  # base first, then by name
    write_lock(tmp_path / LOCK_FILE, lock)
    text = (tmp_path / LOCK_FILE).read_text()
    assert read_lock(tmp_path / LOCK_FILE) == lock and json.loads(text)["image"] == "x"
    assert sum('"sha256"' in line for line in text.splitlines()) == 3 and dumps(lock) == text
    assert lock.inreleases() == [inrelease] and lock.digest() == make_lock("x", [inrelease], list(
        reversed(lock.packages))).digest()


@pytest.mark.parametrize("bad", [
    {"version": 1, "image": "x", "packages": [{"name": "a", "version": "1", "architecture": "amd64",
                                               "url": "http://h/pool/a.deb", "size": 1, "sha256": "short",
                                               "layer": "image"}]},
    {"version": 2, "image": "x"},
    {"version": 1, "image": "x", "surprise": True},
])
def test_a_malformed_lock_is_one_clear_error(tmp_path: Path, bad: dict) -> None:  # type: ignore[type-arg]
    (tmp_path / LOCK_FILE).write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="invalid lock file") as err:
        read_lock(tmp_path / LOCK_FILE)
    assert "assembler lock" in err.value.resolution


def test_changes_name_upgrades_additions_and_removals() -> None:
    old = make_lock("x", [], [pkg("a", "1"), pkg("b", "1"), pkg("c", "1", "base")])
    new = make_lock("x", [], [pkg("a", "2"), pkg("c", "1", "image"), pkg("d", "1")])
    assert [str(c) for c in changes(old, new)] == [
        "a:amd64: 1 -> 2", "b:amd64: 1 -> (none)", "d:amd64: (none) -> 1"]
    assert changes(new, new) == []


@pytest.mark.parametrize("image", ["debian-12", "debian-12-k8s-node"])
def test_shipped_locks_hold_base_and_image_packages(image: str) -> None:
    lock = read_lock(REPO / "Containerfiles" / image / LOCK_FILE)
    names = {p.name for p in lock.packages}
    assert {"linux-image-amd64", "cloud-init", "openssh-server", "systemd-sysv", "grub-pc-bin"} <= names
    assert not {"grub-pc", "grub-efi-amd64"} & names  # their postinst would run grub-install
    assert {p.layer for p in lock.packages} == {"base", "image"}
    assert {i.url.split("/dists/")[1] for i in lock.inreleases()} == {
        "bookworm/InRelease", "bookworm-updates/InRelease", "bookworm-security/InRelease"}
    assert all(p.url.startswith("http://deb.debian.org/") for p in lock.packages)


def test_release_and_packages_parsers() -> None:
    release = index.parse_release(
        b"-----BEGIN PGP SIGNED MESSAGE-----\nDate: Sat, 11 Jul 2026 10:16:37 UTC\nSHA256:\n"
        b" " + SHA_A.encode() + b" 12 main/binary-amd64/Packages.xz\n"
        b" " + SHA_B.encode() + b" 40 main/binary-amd64/Packages\n-----BEGIN PGP SIGNATURE-----\n")
    assert release.date == "Sat, 11 Jul 2026 10:16:37 UTC"
    assert release.files["main/binary-amd64/Packages.xz"].size == 12
    assert release.by_sha256(SHA_B) is not None and release.by_sha256("c" * 64) is None
    stanzas = (b"Package: a\nVersion: 1:2.0-1\nArchitecture: all\nFilename: pool/main/a/a_2.0-1_all.deb\n"
               b"Size: 7\nSHA256: " + SHA_A.encode() + b"\nDescription: x\n more\n\nPackage: broken\n")
    [record] = index.parse_packages(index.decompress(lzma.compress(stanzas), "Packages.xz"))
    assert (record.name, record.version, record.filename, record.size) == ("a", "1:2.0-1",
                                                                         "pool/main/a/a_2.0-1_all.deb", 7)
    url = "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/" + SHA_A
    assert index.archive_of(url) == "http://deb.debian.org/debian" and index.by_hash(url) == SHA_A
    assert index.suite_dir(url) == "http://deb.debian.org/debian/dists/bookworm/"
    assert index.archive_of("http://example.org/file.tar") is None


def test_the_store_keeps_only_what_hashes_to_its_name(tmp_path: Path) -> None:
    store = PackageStore(tmp_path)
    good = hashlib.sha256(b"deb").hexdigest()
    assert store.put(good, [b"d", b"eb"], what="x", where="here").read_bytes() == b"deb"
    with pytest.raises(IntegrityError, match="does not match"):
        store.put(SHA_A, [b"other"], what="y", where="there")
    assert not store.has(SHA_A) and not list(store.path(SHA_A).parent.glob(".*"))


def test_snapshot_sources_are_dated_by_the_locked_inrelease() -> None:
    from assembler.mirrors import MirrorMap
    from assembler.packages.locking import sources_for

    inrelease = IndexFile(url="http://deb.debian.org/debian/dists/bookworm/InRelease", sha256=SHA_B, size=3,
                          date="Sat, 11 Jul 2026 10:16:37 UTC")
    lock = make_lock("x", [inrelease], [pkg("zsh", "5")])
    image = {"http://deb.debian.org/debian": "http://snap.image/debian/{timestamp}"}
    mirrors = MirrorMap(urls={"http://deb.debian.org/debian": "http://mirror.internal/debian"})
    sources = sources_for(lock, mirrors, snapshots=image)
    url = lock.packages[0].url
    assert sources.candidates(url) == [
        url.replace("http://deb.debian.org/debian", "http://mirror.internal/debian"),
        url.replace("http://deb.debian.org/debian", "http://snap.image/debian/20260711T101637Z")]
    site = mirrors.model_copy(update={"snapshots": {"http://deb.debian.org/debian": "http://snap.site/{timestamp}"}})
    assert sources_for(lock, site, snapshots=image).candidates(url)[1].startswith("http://snap.site/20260711T101637Z/")
    assert sources_for(lock, mirrors, snapshots=image, offline=True).candidates(url) == []
