"""A phase store on an OCI registry: each store entry an OCI artifact tagged by its key.

`--cache-to URL` pushes every entry a build made or reused; `--cache-from URL` pulls the entries a build
lacks. One artifact per entry: its config blob is the entry's metadata, each file one gzip layer whose
annotations carry the file's path, size and sha256. The registry protocol (authentication from the
standard auth files, uploads, digest checks) is skopeo's: an entry is written as an OCI image layout and
copied to the registry, and pulled by manifest digest into a layout that is then unpacked here. skopeo
pushes the manifest last, so a tag exists only once every blob is in the registry: a push that dies half
way leaves no entry to reuse. Every pulled byte is checked again here (the compressed blob against its
digest, the file against its sha256) before the entry is renamed into the local store; the manifest and
the metadata are untrusted input, validated like any file we read. Builds are reproducible, so two
machines pushing one key push the same files; when they do not, that is a reproducibility failure,
reported with both digests (the first push stays).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
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
from assembler.log import log
from assembler.registry import OCI_MANIFEST, TITLE, parse_repository
from assembler.run import require_tool, run

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
LAYOUT_REF = "entry"  # the one image in a layout written or read here
SKOPEO_SECONDS = 3600.0  # one entry's copy (a multi-GB disk over a slow link), not a hang


class RemoteError(AssemblerError):
    """What a registry store served cannot be used (missing blob, digest mismatch, malformed manifest)."""


class ForeignEntry(RemoteError):
    """A tag that holds something else than an assembler store entry (a push replaces it)."""


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
        raise ForeignEntry(f"the registry store names a file {name!r} outside its entry",
                          resolution="the registry holds a foreign or tampered artifact; delete that tag")
    return name


def entry_files(directory: Path) -> list[str]:
    """The files of a local entry that are pushed (everything but its metadata), sorted."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.name != "meta.json" and not p.name.startswith("."))


class RegistryStore:
    """One repository of one registry holding store entries, tag = key."""

    def __init__(self, url: str) -> None:
        self.host, self.insecure, self.repo = parse_repository(url)
        self.name = f"{self.host}/{self.repo}"  # what logs and manifests show: no scheme, no credentials

    @staticmethod
    def tag(key: str) -> str:
        if not _TAG.fullmatch(key):
            raise ConfigError(f"{key!r} cannot be a registry tag")  # a programming error: keys are hex
        return key

    # -- the registry side: skopeo
    def _ref(self, reference: str) -> str:
        return f"docker://{self.host}/{self.repo}{reference}"

    def _skopeo(self, *args: str) -> tuple[int, bytes, str]:
        proc = run([require_tool("skopeo", "copies phase entries to and from the registry store"), *args],
                   check=False, tied=True, timeout=SKOPEO_SECONDS)
        return proc.returncode, proc.stdout or b"", (proc.stderr or b"").decode(errors="replace")

    def _raw_manifest(self, tag: str) -> bytes | None:
        code, out, err = self._skopeo("inspect", "--raw", f"--tls-verify={str(not self.insecure).lower()}",
                                      self._ref(f":{tag}"))
        if code == 0:
            if len(out) > MAX_MANIFEST:
                raise ForeignEntry(f"{self.name}:{tag} has a {len(out)}-byte manifest", resolution="delete that tag")
            return out
        if "manifest unknown" in err or "name unknown" in err:
            return None
        raise self._unusable(err, f"registry store {self.name} did not answer")

    def _unusable(self, err: str, brief: str) -> RemoteError:
        if re.search(r"unauthorized|authentication required|denied", err, re.IGNORECASE):
            return RemoteError(f"registry store {self.name} refused this machine's credentials (or it has none)",
                               details=_last_line(err),
                               resolution=f"log in once: `skopeo login {self.host}` (or podman/docker login); "
                                          "the auth file is read from the standard places")
        return RemoteError(brief, details=_last_line(err),
                           resolution="check the URL, that the registry runs and has space, and its credentials "
                                      "(`skopeo login`); or drop --cache-from/--cache-to")

    def _copy(self, source: str, dest: str, what: str) -> None:
        tls = f"--{'src' if source.startswith('docker://') else 'dest'}-tls-verify={str(not self.insecure).lower()}"
        code, _, err = self._skopeo("copy", "--quiet", tls, source, dest)
        if code != 0 and (bad := re.search(r"Digest did not match, expected (sha256:\w+), got (sha256:\w+)", err)):
            raise RemoteError(f"{self.name}: a blob does not match its digest (refused)",
                              details=f"expected {bad.group(1)}\ngot      {bad.group(2)}",
                              resolution="the registry holds a damaged or tampered blob; the phase is built "
                                         "here instead: delete the tag in the registry")
        if code != 0:
            raise self._unusable(err, f"{what} {self.name} failed")

    # -- entries
    def lookup(self, key: str) -> RemoteEntry | None:
        """The entry tagged `key`, validated; None when the registry has no such tag."""
        found = self._lookup(key)
        return found[0] if found else None

    def _lookup(self, key: str) -> tuple[RemoteEntry, str] | None:
        tag = self.tag(key)
        body = self._raw_manifest(tag)
        if body is None:
            return None
        try:
            manifest = _Manifest.model_validate_json(body)
        except ValidationError as exc:
            raise ForeignEntry(f"{self.name}:{tag} is not an assembler store entry", details=str(exc)[:1000],
                              resolution="delete that tag from the registry, or use another repository") from exc
        if manifest.artifact_type != ARTIFACT_TYPE or manifest.config.media_type != CONFIG_TYPE:
            raise ForeignEntry(f"{self.name}:{tag} is not an assembler store entry "
                              f"(artifactType {manifest.artifact_type!r})",
                              resolution="use a repository that only assembler writes to")
        files = []
        for layer in manifest.layers:
            note = layer.annotations
            if layer.media_type != FILE_TYPE or not re.fullmatch(r"[0-9a-f]{64}", note.get(FILE_SHA256, "")) \
                    or not note.get(FILE_SIZE, "").isdigit():
                raise ForeignEntry(f"{self.name}:{tag} has a layer without a file sha256 and size",
                                  resolution="delete that tag from the registry")
            files.append(RemoteFile(_safe_path(note.get(TITLE, "")), note[FILE_SHA256], int(note[FILE_SIZE]),
                                    layer.digest, layer.size))
        if len({f.path for f in files}) != len(files):
            raise ForeignEntry(f"{self.name}:{tag} names one file twice", resolution="delete that tag")
        if manifest.config.size > MAX_META:
            raise ForeignEntry(f"{self.name}:{tag} has a {manifest.config.size}-byte metadata blob",
                              resolution="delete that tag")
        entry = RemoteEntry(tag, manifest.config.digest, manifest.config.size, tuple(files))
        return entry, "sha256:" + sha256_bytes(body)

    def pull(self, key: str, dest: Path) -> dict[str, Any] | None:
        """Write the entry's files into the empty directory `dest` and return its metadata (without the
        local fields); None when the registry lacks the key. RemoteError when anything fails a check."""
        found = self._lookup(key)
        if found is None:
            return None
        remote, manifest_digest = found
        layout = Path(tempfile.mkdtemp(prefix=".pull-", dir=dest.parent))
        try:
            # By digest, not tag: what is copied is the manifest just validated, whatever the tag says now.
            self._copy(self._ref(f"@{manifest_digest}"), f"oci:{layout}:{LAYOUT_REF}", "pulling from")
            meta_bytes = b"".join(self._blob(layout, remote.config, remote.config_size))
            if "sha256:" + sha256_bytes(meta_bytes) != remote.config:
                raise self._mismatch(key, "metadata", remote.config, "sha256:" + sha256_bytes(meta_bytes))
            try:
                meta = json.loads(meta_bytes)
            except ValueError as exc:
                raise RemoteError(f"{self.name}:{key[:12]}: metadata is not JSON",
                                  resolution="delete that tag") from exc
            if not isinstance(meta, dict) or meta.get("key") != key:
                raise RemoteError(f"{self.name}:{key[:12]}: metadata names another key",
                                  resolution="delete that tag (it was copied from another entry)")
            for item in remote.files:
                self._pull_file(key, layout, item, dest / item.path)
        finally:
            shutil.rmtree(layout, ignore_errors=True)
        return {k: v for k, v in meta.items() if k not in LOCAL_FIELDS}

    def _blob(self, layout: Path, digest: str, size: int) -> Iterator[bytes]:
        path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not path.is_file():
            raise RemoteError(f"{self.name}: blob {digest[:19]} did not arrive",
                              resolution="the registry holds a damaged artifact; delete that tag")
        got = 0
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                got += len(chunk)
                if got > size:
                    raise RemoteError(f"{self.name}: blob {digest[:19]} is larger than its manifest says",
                                      resolution="the registry holds a tampered blob; delete that tag")
                yield chunk

    def _pull_file(self, key: str, layout: Path, item: RemoteFile, path: Path) -> None:
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
                for chunk in self._blob(layout, item.blob, item.blob_size):
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
        except ForeignEntry:
            present = None  # a malformed tag is replaced by a good one
        if present is not None:
            theirs = present.digests()
            if theirs == digests:
                return Pushed(PushResult.PRESENT)
            return Pushed(PushResult.CONFLICT, _differences(digests, theirs))
        layout = Path(tempfile.mkdtemp(prefix=".push-", dir=scratch))
        try:
            blobs = layout / "blobs" / "sha256"
            blobs.mkdir(parents=True)
            layers = [_write_file_blob(directory / name, name, digests[name], blobs) for name in names]
            config = canonical_json({k: v for k, v in meta.items() if k not in LOCAL_FIELDS})
            manifest = canonical_json({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": _write_blob(blobs, config), "size": len(config)},
                "layers": layers,
                "annotations": {KEY_ANNOTATION: key},
            })
            index = {"schemaVersion": 2, "manifests": [{
                "mediaType": OCI_MANIFEST, "digest": _write_blob(blobs, manifest), "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": LAYOUT_REF}}]}
            (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
            (layout / "index.json").write_bytes(canonical_json(index))
            # skopeo skips the blobs the registry has and puts the manifest last: until that tag exists the
            # entry does not, whatever blobs a push that died left behind.
            source, dest = f"oci:{layout}:{LAYOUT_REF}", self._ref(f":{self.tag(key)}")
            try:
                self._copy(source, dest, "pushing to")
            except RemoteError as exc:
                # Two machines pushing one key at once: the registry can refuse the second manifest ("blob
                # unknown") while the first one's upload of that blob is being committed. Once more, skopeo
                # finds every blob present and puts only the manifest.
                if "blob unknown" not in exc.details:
                    raise
                log.debug("%s: retrying the push of %s after %s", self.name, key[:12], exc.details)
                self._copy(source, dest, "pushing to")
        finally:
            shutil.rmtree(layout, ignore_errors=True)
        # Another machine may have pushed the same key meanwhile: the same files are fine, others are the
        # reproducibility failure a push that came second would have reported.
        stored = self.lookup(key)
        if stored is not None and stored.digests() != digests:
            return Pushed(PushResult.CONFLICT, _differences(digests, stored.digests()))
        return Pushed(PushResult.PUSHED)


def _differences(ours: dict[str, str], theirs: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{name}: ours sha256:{ours.get(name, '-')} theirs sha256:{theirs.get(name, '-')}"
                 for name in sorted(set(ours) | set(theirs)) if ours.get(name) != theirs.get(name))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-500:] if lines else "(no output)"


def _write_blob(blobs: Path, data: bytes) -> str:
    digest = sha256_bytes(data)
    (blobs / digest).write_bytes(data)
    return "sha256:" + digest


def _write_file_blob(path: Path, name: str, sha256: str, blobs: Path) -> dict[str, Any]:
    # gzip -1 with a fixed header: the same file gives the same blob on every machine (same zlib).
    fd, tmp_name = tempfile.mkstemp(prefix=".blob-", dir=blobs)
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
        size = tmp.stat().st_size
        os.replace(tmp, blobs / digest.hexdigest())
    finally:
        tmp.unlink(missing_ok=True)
    return {"mediaType": FILE_TYPE, "digest": "sha256:" + digest.hexdigest(), "size": size,
            "annotations": {TITLE: name, FILE_SHA256: sha256, FILE_SIZE: str(path.stat().st_size)}}
