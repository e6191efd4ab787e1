"""flatten() of a real image equals the container's own view (`docker export`)."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from assembler import engine
from assembler.fsutil import sha256_file
from assembler.packages import BUILD_ONLY_PATHS
from assembler.rootfs.flatten import FlattenResult, flatten
from tests.helpers import scratch_dir

SDE = 1_747_699_200  # the SOURCE_DATE_EPOCH of the session fixtures (conftest.py)
pytestmark = pytest.mark.integration

CAP_KEY = "SCHILY.xattr.security.capability"
CAP_NET_RAW_EP = bytes([1, 0, 0, 2, 0, 0x20, 0, 0] + [0] * 12)
# What the engine adds to every container (its "init" layer and mount points), not part of the image.
CONTAINER_ONLY = {".dockerenv", "etc/hosts", "etc/hostname", "etc/resolv.conf", "etc/mtab", "dev/console",
                  "dev/pts", "dev/shm", "proc", "sys"}


@dataclass(frozen=True)
class Entry:
    kind: bytes
    mode: int
    owner: tuple[int, int]
    target: str  # symlink target
    digest: str  # sha256 of the data (for hard links: of the data they share)
    capability: bytes | None
    device: tuple[int, int]


def view(path: Path) -> tuple[dict[str, Entry], set[frozenset[str]]]:
    """Entries by normalized path, and the hard-link groups (paths sharing one inode)."""
    entries: dict[str, Entry] = {}
    groups: dict[str, set[str]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            name = m.name.removeprefix("./").rstrip("/")
            if not name or name in CONTAINER_ONLY:
                continue
            kind = tarfile.REGTYPE if m.islnk() else m.type
            if m.islnk():
                target = m.linkname.removeprefix("./")
                digest = entries[target].digest
                groups.setdefault(target, {target}).add(name)
            else:
                data = tar.extractfile(m) if m.isreg() else None
                digest = hashlib.sha256(data.read()).hexdigest() if data else ""
            cap = m.pax_headers.get(CAP_KEY)
            capability = cap.encode("utf-8", "surrogateescape") if cap is not None else None
            entries[name] = Entry(kind, m.mode & 0o7777, (m.uid, m.gid), m.linkname if m.issym() else "",
                                  digest, capability, (m.devmajor, m.devminor) if m.isdev() else (0, 0))
    return entries, {frozenset(g) for g in groups.values()}


@pytest.fixture(scope="module")
def exported(engine_client: docker.DockerClient, layers_image: engine.BuiltImage, tmp_path_factory:
             pytest.TempPathFactory) -> Iterator[Path]:
    with scratch_dir(tmp_path_factory, "export") as root:
        yield export(engine_client, layers_image.id, root / "export.tar")


def export(client: docker.DockerClient, image: str, dest: Path) -> Path:
    """The engine's own view of an image: `docker export` of a container created (never started) from it."""
    container = client.containers.create(image, command=["true"])
    try:
        with dest.open("wb") as out:
            for chunk in container.export():
                out.write(chunk)
    finally:
        container.remove(force=True)
    return dest


def test_flattened_rootfs_equals_the_containers_view(layers_rootfs: FlattenResult, exported: Path) -> None:
    ours, our_links = view(layers_rootfs.path)
    theirs, their_links = view(exported)
    # The build base's own apt config is in every container and, by design, in no flattened rootfs.
    assert set(theirs) >= BUILD_ONLY_PATHS and not BUILD_ONLY_PATHS & set(ours)
    theirs = {p: v for p, v in theirs.items() if p not in BUILD_ONLY_PATHS}
    assert set(ours) == set(theirs)
    differing = [p for p in ours if ours[p] != theirs[p]]
    assert differing == []
    assert our_links == their_links


def test_deleted_files_are_gone_and_links_survive(layers_rootfs: FlattenResult) -> None:
    entries, links = view(layers_rootfs.path)
    for gone in ("opt/t/doomed", "opt/t/keep", "opt/t/gone", "opt/t/gone/sub/x", "opt/t/opq/old"):
        assert gone not in entries
    assert not [p for p in entries if "/.wh." in f"/{p}"]
    assert entries["opt/t/keep-link"].kind == tarfile.REGTYPE  # its target was deleted: it holds the data
    assert entries["opt/t/keep-link"].digest == hashlib.sha256(b"keep\n").hexdigest()
    assert frozenset({"opt/t/hl-a", "opt/t/hl-b"}) in links
    assert entries["opt/t/captool"].capability == CAP_NET_RAW_EP
    assert "opt/t/opq/new" in entries


def test_output_format_is_canonical(layers_rootfs: FlattenResult) -> None:
    with tarfile.open(layers_rootfs.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape"))
    assert all(m.mtime <= SDE and m.uname == "" and m.gname == "" for m in members)
    assert not [m for m in members if {"atime", "ctime"} & set(m.pax_headers)]
    seen: set[str] = set()
    for m in members:
        assert not m.islnk() or m.linkname in seen  # a hard link points backwards
        seen.add(m.name)
    assert layers_rootfs.sha256 == sha256_file(layers_rootfs.path)


def test_flatten_is_deterministic_on_a_real_image(layers_archive: Path, layers_rootfs: FlattenResult) -> None:
    again = flatten(layers_archive, layers_archive.with_name("again.tar"), source_date_epoch=SDE)
    assert again.sha256 == layers_rootfs.sha256
    assert again.image_id == layers_rootfs.image_id
    assert [layer.diff_id for layer in again.layers] == [
        step.diff_id for step in engine.image_steps(engine.connect(), layers_rootfs.image_id)]
