"""A phase store on an OCI registry: each store entry an OCI artifact tagged by its key.

`--cache-to URL` pushes every entry a build made or reused; `--cache-from URL` pulls the entries a build
lacks. One artifact per entry: its config blob is the entry's metadata, each file one gzip layer whose
annotations carry the file's path, size and sha256. The manifest is pushed last, so a tag exists only once
every blob is in the registry: a push that dies half way leaves no entry to reuse. Every pulled byte is
checked twice (the compressed blob against its digest, the file against its sha256) before the entry is
renamed into the local store; the manifest and the metadata are untrusted input, validated like any file
we read. Builds are reproducible, so two machines pushing one key push the same files; when they do not,
that is a reproducibility failure, reported with both digests (the first push stays).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assembler.errors import AssemblerError, ConfigError
from assembler.fsutil import CHUNK, canonical_json, sha256_bytes, sha256_file
from assembler.registry import OCI_MANIFEST, TITLE, NullTask, Registry, repository

ARTIFACT_TYPE = "application/vnd.assembler.phase.v1"
CONFIG_TYPE = "application/vnd.assembler.phase.meta.v1+json"
FILE_TYPE = "application/vnd.assembler.phase.file.v1+gzip"
FILE_SHA256 = "dev.assembler.file.sha256"  # of the file itself (the layer digest is of its gzip stream)
FILE_SIZE = "dev.assembler.file.size"
KEY_ANNOTATION = "dev.assembler.key"
MAX_MANIFEST = 1 << 20
MAX_META = 16 << 20
MAX_FILES = 256
HOLE = 64 << 10  # a zero block this large is skipped, not written, when pulling
ZERO_BLOCK = bytes(HOLE)
# Volatile fields of an entry's metadata (when and with which mtimes this machine wrote it): not pushed, so
# two machines that build the same files push the same manifest.
LOCAL_FIELDS = ("created", "files")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class RemoteError(AssemblerError):
    """What a registry store served cannot be used (missing blob, digest mismatch, malformed manifest)."""


class _Descriptor(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    media_type: str = Field(alias="mediaType")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int = Field(alias="schemaVersion")
    artifact_type: str = Field("", alias="artifactType")
    config: _Descriptor
    layers: list[_Descriptor] = Field(max_length=MAX_FILES)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a remote entry: where it goes, what it is, and the blob that carries it."""

    path: str
    sha256: str
    size: int
    blob: str
    blob_size: int


@dataclass(frozen=True)
class RemoteEntry:
    tag: str
    config: str  # digest of the metadata blob
    config_size: int
    files: tuple[RemoteFile, ...]

    def digests(self) -> dict[str, str]:
        return {f.path: f.sha256 for f in self.files}


class PushResult(StrEnum):
    PUSHED = "pushed"
    PRESENT = "already in the registry"
    CONFLICT = "reproducibility failure"


@dataclass(frozen=True)
class Pushed:
    result: PushResult
    differences: tuple[str, ...] = ()  # "PATH: ours sha256:... theirs sha256:..." on a conflict


def _safe_path(name: str) -> str:
    path = PurePosixPath(name)
    if (not name or path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/"))
            or name == "meta.json" or len(name) > 255):
        raise RemoteError(f"the registry store names a file {name!r} outside its entry",
                          resolution="the registry holds a foreign or tampered artifact; delete that tag")
    return name


def entry_files(directory: Path) -> list[str]:
    """The files of a local entry that are pushed (everything but its metadata), sorted."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.name != "meta.json" and not p.name.startswith("."))


class RegistryStore:
    """One repository of one registry holding store entries, tag = key."""

    def __init__(self, url: str, registry: Registry | None = None) -> None:
        self.registry, self.repo = (registry, url) if registry is not None else repository(url)
        self.name = f"{self.registry.host}/{self.repo}"  # what logs and manifests show: no scheme, no credentials

    @staticmethod
    def tag(key: str) -> str:
        if not _TAG.fullmatch(key):
            raise ConfigError(f"{key!r} cannot be a registry tag")  # a programming error: keys are hex
        return key

    def lookup(self, key: str) -> RemoteEntry | None:
        """The entry tagged `key`, validated; None when the registry has no such tag."""
        tag = self.tag(key)
        body = self.registry.get_manifest(self.repo, tag, limit=MAX_MANIFEST)
        if body is None:
            return None
        try:
            manifest = _Manifest.model_validate_json(body)
        except ValidationError as exc:
            raise RemoteError(f"{self.name}:{tag} is not an assembler store entry", details=str(exc)[:1000],
                              resolution="delete that tag from the registry, or use another repository") from exc
        if manifest.artifact_type != ARTIFACT_TYPE or manifest.config.media_type != CONFIG_TYPE:
            raise RemoteError(f"{self.name}:{tag} is not an assembler store entry "
                              f"(artifactType {manifest.artifact_type!r})",
                              resolution="use a repository that only assembler writes to")
        files = []
        for layer in manifest.layers:
            note = layer.annotations
            if layer.media_type != FILE_TYPE or not re.fullmatch(r"[0-9a-f]{64}", note.get(FILE_SHA256, "")) \
                    or not note.get(FILE_SIZE, "").isdigit():
                raise RemoteError(f"{self.name}:{tag} has a layer without a file sha256 and size",
                                  resolution="delete that tag from the registry")
            files.append(RemoteFile(_safe_path(note.get(TITLE, "")), note[FILE_SHA256], int(note[FILE_SIZE]),
                                    layer.digest, layer.size))
        if len({f.path for f in files}) != len(files):
            raise RemoteError(f"{self.name}:{tag} names one file twice", resolution="delete that tag")
        if manifest.config.size > MAX_META:
            raise RemoteError(f"{self.name}:{tag} has a {manifest.config.size}-byte metadata blob",
                              resolution="delete that tag")
        return RemoteEntry(tag, manifest.config.digest, manifest.config.size, tuple(files))

    def pull(self, key: str, dest: Path) -> dict[str, Any] | None:
        """Write the entry's files into the empty directory `dest` and return its metadata (without the
        local fields); None when the registry lacks the key. RemoteError when anything fails a check."""
        remote = self.lookup(key)
        if remote is None:
            return None
        meta_bytes = b"".join(self._blob(remote.config, remote.config_size))
        if "sha256:" + sha256_bytes(meta_bytes) != remote.config:
            raise self._mismatch(key, "metadata", remote.config, "sha256:" + sha256_bytes(meta_bytes))
        try:
            meta = json.loads(meta_bytes)
        except ValueError as exc:
            raise RemoteError(f"{self.name}:{key[:12]}: metadata is not JSON", resolution="delete that tag") from exc
        if not isinstance(meta, dict) or meta.get("key") != key:
            raise RemoteError(f"{self.name}:{key[:12]}: metadata names another key",
                              resolution="delete that tag (it was copied from another entry)")
        for item in remote.files:
            self._pull_file(key, item, dest / item.path)
        return {k: v for k, v in meta.items() if k not in LOCAL_FIELDS}

    def _blob(self, digest: str, size: int) -> Iterator[bytes]:
        got = 0
        for chunk in self.registry.pull_blob(self.repo, digest):
            got += len(chunk)
            if got > size:
                raise RemoteError(f"{self.name}: blob {digest[:19]} is larger than its manifest says",
                                  resolution="the registry holds a tampered blob; delete that tag")
            yield chunk

    def _pull_file(self, key: str, item: RemoteFile, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob_digest, file_digest = hashlib.sha256(), hashlib.sha256()
        inflate = zlib.decompressobj(wbits=31)
        written = 0
        with path.open("wb") as out:
            def write(data: bytes) -> None:
                nonlocal written
                written += len(data)
                if written > item.size:
                    raise RemoteError(f"{self.name}:{key[:12]}: {item.path} inflates past its recorded size",
                                      resolution="the registry holds a tampered blob; delete that tag")
                file_digest.update(data)
                for at in range(0, len(data), HOLE):  # zeros stay holes: a pulled raw disk stays sparse
                    block = data[at:at + HOLE]
                    if block == ZERO_BLOCK:  # bytes == bytes is a memcmp (a memoryview compares per item)
                        out.seek(HOLE, os.SEEK_CUR)
                    else:
                        out.write(block)

            try:
                for chunk in self._blob(item.blob, item.blob_size):
                    blob_digest.update(chunk)
                    while chunk:
                        write(inflate.decompress(chunk, CHUNK))
                        chunk = inflate.unconsumed_tail
                write(inflate.flush())
            except zlib.error as exc:
                raise self._mismatch(key, item.path, item.blob, "sha256:" + blob_digest.hexdigest()) from exc
            out.truncate(written)
        if "sha256:" + blob_digest.hexdigest() != item.blob:
            raise self._mismatch(key, item.path, item.blob, "sha256:" + blob_digest.hexdigest())
        if file_digest.hexdigest() != item.sha256 or written != item.size:
            raise self._mismatch(key, item.path, item.sha256, file_digest.hexdigest())

    def _mismatch(self, key: str, what: str, expected: str, got: str) -> RemoteError:
        return RemoteError(f"{self.name}:{key[:12]}: {what} does not match its digest (refused)",
                           details=f"expected {expected}\ngot      {got}",
                           resolution="the registry holds a damaged or tampered blob; the phase is built "
                                      "here instead, and pushing it (--cache-to) will not replace a tag: "
                                      "delete the tag in the registry")

    def push(self, key: str, directory: Path, meta: dict[str, Any], scratch: Path) -> Pushed:
        """Push the entry in `directory` (idempotent: a tag already holding the same files is left alone)."""
        names = entry_files(directory)
        digests = {name: sha256_file(directory / name) for name in names}
        try:
            present = self.lookup(key)
        except RemoteError:
            present = None  # a malformed tag is replaced by a good one
        if present is not None:
            theirs = present.digests()
            if theirs == digests:
                return Pushed(PushResult.PRESENT)
            differences = tuple(f"{name}: ours sha256:{digests.get(name, '-')} theirs sha256:{theirs.get(name, '-')}"
                                for name in sorted(set(digests) | set(theirs))
                                if digests.get(name) != theirs.get(name))
            return Pushed(PushResult.CONFLICT, differences)
        layers = [self._push_file(directory / name, name, digests[name], scratch) for name in names]
        config = canonical_json({k: v for k, v in meta.items() if k not in LOCAL_FIELDS})
        config_digest = "sha256:" + sha256_bytes(config)
        if not self.registry.has_blob(self.repo, config_digest):
            self.registry.push_bytes(self.repo, config_digest, config)
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
            "layers": layers,
            "annotations": {KEY_ANNOTATION: key},
        }
        # Last: until this tag exists the entry does not, whatever the blobs above left behind.
        self.registry.put_manifest(self.repo, self.tag(key), canonical_json(manifest))
        return Pushed(PushResult.PUSHED)

    def _push_file(self, path: Path, name: str, sha256: str, scratch: Path) -> dict[str, Any]:
        # gzip -1 with a fixed header: the same file gives the same blob on every machine (same zlib).
        fd, tmp_name = tempfile.mkstemp(prefix=".push-", suffix=".gz", dir=scratch)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            deflate = zlib.compressobj(1, zlib.DEFLATED, 31)
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    data = deflate.compress(chunk)
                    digest.update(data)
                    out.write(data)
                data = deflate.flush()
                digest.update(data)
                out.write(data)
            blob = "sha256:" + digest.hexdigest()
            size = tmp.stat().st_size
            if not self.registry.has_blob(self.repo, blob):
                self.registry.push_blob(self.repo, blob, size, lambda: tmp.open("rb"), NullTask())
        finally:
            tmp.unlink(missing_ok=True)
        return {"mediaType": FILE_TYPE, "digest": blob, "size": size,
                "annotations": {TITLE: name, FILE_SHA256: sha256, FILE_SIZE: str(path.stat().st_size)}}
