"""Offline bundles: every locked input of an image in one OCI image layout (a tar), blobs named by sha256.

A bundle holds the lock, the build inputs (the image directory as the BOM records it), every .deb and index
file the lock names and every pinned download. Each blob's digest is the sha256 the lock already pins, so
importing verifies each file by its name and puts it in the package store (or the download cache); a build
with `--bundle FILE --offline` then needs no mirror. The layout is deterministic: same lock, same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from assembler.errors import AssemblerError, ConfigError
from assembler.fsutil import CHUNK, atomic_path, canonical_json, sha256_bytes
from assembler.packages.lockfile import Lock, dumps
from assembler.packages.sources import Sources
from assembler.packages.store import IntegrityError, PackageStore
from assembler.registry import OCI_MANIFEST, TITLE, NullTask, repository
from assembler.rootfs.downloads import Download, cache_path


class Media(StrEnum):
    """The media types of a bundle's manifest, config and blobs."""

    ARTIFACT = "application/vnd.assembler.bundle.v1"
    CONFIG = "application/vnd.assembler.bundle.config.v1+json"
    LOCK = "application/vnd.assembler.lock.v1+json"
    INPUTS = "application/vnd.assembler.inputs.v1+json"
    DEB = "application/vnd.debian.binary-package"
    INDEX = "application/vnd.assembler.apt-index"
    DOWNLOAD = "application/vnd.assembler.download"


REF_NAME = "org.opencontainers.image.ref.name"
_BLOB_RE = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
MTIME = 0  # every member of the layout tar: the bundle is a function of its content only


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    media_type: str
    title: str
    path: Path | None = None  # a file in the store or cache, else `data`
    data: bytes = b""

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": f"sha256:{self.sha256}", "size": self.size,
                "annotations": {TITLE: self.title}}

    def open(self) -> IO[bytes]:
        return self.path.open("rb") if self.path else io.BytesIO(self.data)


def _bytes(data: bytes, media_type: str, title: str) -> Blob:
    return Blob(sha256_bytes(data), len(data), media_type, title, data=data)


@dataclass(frozen=True)
class Layout:
    """A bundle in memory: its manifest, config and content blobs (files stay where they are)."""

    image: str
    manifest: Blob
    config: Blob
    blobs: list[Blob]

    def summary(self) -> dict[str, Any]:
        return {"manifest": f"sha256:{self.manifest.sha256}", "blobs": len(self.blobs),
                "bytes": sum(b.size for b in self.blobs)}


def collect(lock: Lock, inputs: dict[str, Any], downloads: list[Download], cache_dir: Path,
            sources: Sources) -> Layout:
    """Every blob of the bundle; what the store lacks is fetched (and verified) first."""
    store = PackageStore(cache_dir)
    blobs = [_bytes(dumps(lock).encode(), Media.LOCK, "image.lock.json"),
             _bytes(canonical_json(inputs), Media.INPUTS, "build-inputs.json")]
    pinned: list[tuple[str, str, int, str]] = [(i.url, i.sha256, i.size, Media.INDEX) for i in lock.indexes]
    pinned += [(p.url, p.sha256, p.size, Media.DEB) for p in lock.packages]
    for url, sha, size, kind in pinned:
        path = store.verified(sha) or sources.fetch(url, sha, store, what=url)
        blobs.append(Blob(sha, size, kind, url, path))
    for download in downloads:
        path = cache_path(cache_dir, download.sha256)
        if not path.is_file():
            if download.optional:
                continue  # an optional download the build skipped is not an input
            raise ConfigError(f"download {download.name} is not in the cache",
                              resolution="build the image once (it fetches and verifies every download)")
        blobs.append(Blob(download.sha256, path.stat().st_size, Media.DOWNLOAD, download.url, path))
    unique = sorted({b.sha256: b for b in blobs}.values(), key=lambda b: (b.media_type, b.title))
    config = _bytes(canonical_json({"image": lock.image, "lock": blobs[0].sha256}), Media.CONFIG, "config")
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": Media.ARTIFACT,
        "config": {"mediaType": Media.CONFIG, "digest": f"sha256:{config.sha256}", "size": config.size},
        "layers": [b.descriptor() for b in unique],
    })
    return Layout(lock.image, _bytes(manifest, OCI_MANIFEST, "manifest"), config, unique)


def write(layout: Layout, dest: Path) -> None:
    """The OCI image layout as one tar (atomically), members in a fixed order with fixed metadata."""
    index = canonical_json({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": f"sha256:{layout.manifest.sha256}", "size": layout.manifest.size,
         "annotations": {REF_NAME: layout.image}}]})
    with atomic_path(dest) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", io.BytesIO(b'{"imageLayoutVersion":"1.0.0"}'), 30)
        _add(tar, "index.json", io.BytesIO(index), len(index))
        for blob in sorted([layout.manifest, layout.config, *layout.blobs], key=lambda b: b.sha256):
            with blob.open() as handle:
                _add(tar, f"blobs/sha256/{blob.sha256}", handle, blob.size)


def push(layout: Layout, target: str) -> str:
    """Push every blob (skipping those the registry has: idempotent, resumable) and the manifest, tagged
    IMAGE-<12 hex of the lock>; return the reference. `target` is http(s)://HOST[:PORT]/REPO."""
    registry, repo = repository(target)
    for blob in [layout.config, *layout.blobs]:
        if not registry.has_blob(repo, f"sha256:{blob.sha256}"):
            registry.push_blob(repo, f"sha256:{blob.sha256}", blob.size, blob.open, NullTask())
    lock_sha = layout.blobs[0].sha256 if layout.blobs[0].media_type == Media.LOCK else layout.config.sha256
    tag = f"{layout.image}-{lock_sha[:12]}"
    if registry.manifest_digest(repo, tag) != f"sha256:{layout.manifest.sha256}":
        registry.put_manifest(repo, tag, layout.manifest.data)
    return f"{registry.host}/{repo}:{tag}"


def export(lock: Lock, inputs: dict[str, Any], downloads: list[Download], cache_dir: Path, dest: Path,
           sources: Sources) -> dict[str, Any]:
    """Write the bundle to dest; return its summary."""
    layout = collect(lock, inputs, downloads, cache_dir, sources)
    write(layout, dest)
    return {"path": str(dest), **layout.summary()}


def _add(tar: tarfile.TarFile, name: str, handle: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, MTIME, 0o644, 0, 0
    tar.addfile(info, handle)


@dataclass(frozen=True)
class Imported:
    lock: Lock
    inputs: dict[str, Any]
    blobs: int


def read_bundle(path: Path, cache_dir: Path | None = None) -> Imported:
    """Read (and with cache_dir, import) a bundle; every blob is checked against its digest.

    A bundle is untrusted input: only `blobs/sha256/<hex>` members are read, by their descriptors, and a
    blob whose bytes do not hash to its name is an error.
    """
    if not path.is_file():
        raise ConfigError(f"bundle not found: {path}", resolution="write one with `assembler bundle IMAGE -o FILE`")
    try:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            manifest = _json(tar, members, _only_manifest(_json_member(tar, members, "index.json")))
            config = _json(tar, members, manifest["config"]["digest"])
            layers = manifest.get("layers", [])
            lock_sha = str(config["lock"])
            lock = _lock(_blob_bytes(tar, members, f"sha256:{lock_sha}"))
            inputs_layer = next((x for x in layers if x.get("mediaType") == Media.INPUTS), None)
            inputs = json.loads(_blob_bytes(tar, members, inputs_layer["digest"])) if inputs_layer else {}
            store = PackageStore(cache_dir) if cache_dir else None
            for layer in layers:
                kind, digest = layer.get("mediaType"), str(layer.get("digest", ""))
                if kind in (Media.DEB, Media.INDEX, Media.DOWNLOAD) and cache_dir is not None and store is not None:
                    sha = digest.removeprefix("sha256:")
                    if kind == Media.DOWNLOAD:
                        _import_download(tar, members, digest, cache_path(cache_dir, sha))
                    elif not store.has(sha):
                        store.put(sha, _chunks(tar, members, digest), what=f"bundle blob {sha[:16]}",
                                  where=str(path))
    except (tarfile.TarError, OSError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, AssemblerError):
            raise
        raise ConfigError(f"{path} is not a readable assembler bundle", details=f"{type(exc).__name__}: {exc}",
                          resolution="write it again with `assembler bundle`") from exc
    names = {str(x.get("digest", "")).removeprefix("sha256:") for x in layers}
    absent = [p.name for p in lock.packages if p.sha256 not in names]
    if absent:
        raise ConfigError(f"the bundle {path} lacks {len(absent)} locked package(s)", details=", ".join(absent[:20]),
                          resolution="write the bundle again from a complete store")
    return Imported(lock, inputs, len(layers))


def _only_manifest(index: Any) -> str:
    manifests = index.get("manifests", []) if isinstance(index, dict) else []
    if len(manifests) != 1:
        raise ConfigError(f"a bundle holds exactly one manifest (found {len(manifests)})")
    return str(manifests[0]["digest"])


def _json_member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> Any:
    handle = tar.extractfile(members[name])
    assert handle is not None
    return json.loads(handle.read(1 << 20))


def _json(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], digest: str) -> Any:
    return json.loads(_blob_bytes(tar, members, digest))


def _lock(data: bytes) -> Lock:
    return Lock.model_validate(json.loads(data))


def _member(members: dict[str, tarfile.TarInfo], digest: str) -> tarfile.TarInfo:
    name = f"blobs/sha256/{digest.removeprefix('sha256:')}"
    if not _BLOB_RE.match(name) or name not in members:
        raise ConfigError(f"the bundle lacks blob {digest}", resolution="write the bundle again")
    return members[name]


def _chunks(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], digest: str) -> Iterator[bytes]:
    handle = tar.extractfile(_member(members, digest))
    assert handle is not None
    while chunk := handle.read(CHUNK):
        yield chunk


def _blob_bytes(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], digest: str) -> bytes:
    data = b"".join(_chunks(tar, members, digest))
    actual = hashlib.sha256(data).hexdigest()
    if f"sha256:{actual}" != digest and actual != digest:
        raise IntegrityError(f"bundle blob {digest} does not match its digest", details=f"actual sha256 {actual}",
                             resolution="the bundle is damaged or was altered: write it again")
    return data


def _import_download(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], digest: str, dest: Path) -> None:
    if dest.is_file():
        return
    sha = digest.removeprefix("sha256:")
    with atomic_path(dest) as tmp:
        hasher = hashlib.sha256()
        with tmp.open("wb") as out:
            for chunk in _chunks(tar, members, digest):
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != sha:
            raise IntegrityError(f"bundle download {sha[:16]} does not match its digest",
                                 resolution="the bundle is damaged or was altered: write it again")
