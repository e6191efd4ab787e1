"""The registry phase store against a real registry (Debian's docker-registry on 127.0.0.1).

Entries here are small hand-made store entries: what is under test is the store on the registry (push,
verified pull, idempotence, races, kills, tampering); the e2e test shares a real build through it.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from assembler.fsutil import sha256_file
from assembler.registry import repository
from assembler.remote import PushResult, RegistryStore, RemoteError
from assembler.store import Store
from tests.integration.publish_servers import (  # noqa: F401
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    Server,
    auth_registry,
    registry,
)

pytestmark = pytest.mark.integration


def url(server: Server, repo: str) -> str:
    return f"http://127.0.0.1:{server.port}/{repo}"


def make_entry(root: Path, key: str, seed: bytes, *, big: int = 0) -> tuple[Path, dict[str, object]]:
    """A committed entry of the local store at `root`: a nested file, a sparse file, metadata."""
    store = Store(root)
    with store.writer(key) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "data.txt").write_bytes(seed * 1000)
        with (tmp / "disk.raw").open("wb") as handle:  # a hole, data, a hole: as a raw disk is
            handle.seek(8 << 20)
            handle.write(seed + os.urandom(big) if big else seed)
            handle.truncate(16 << 20)
        Store.commit_meta(tmp, {"phase": "disk", "key": key, "image": "demo", "disk": {"path": "disk.raw"}})
    entry = store.get(key)
    assert entry is not None
    return entry.path, entry.meta


def tags(server: Server, repo: str) -> list[str]:
    resp = requests.get(f"http://127.0.0.1:{server.port}/v2/{repo}/tags/list", timeout=10)
    return sorted(resp.json().get("tags") or []) if resp.ok else []


def blob_file(server: Server, digest: str) -> Path:
    hexa = digest.removeprefix("sha256:")
    return server.workdir / "data" / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def test_push_pull_verified_sparse_and_idempotent(registry: Server, tmp_path: Path) -> None:  # noqa: F811
    key = "a" * 64
    path, meta = make_entry(tmp_path / "a", key, b"one")
    remote = RegistryStore(url(registry, "rs/roundtrip"))
    assert remote.push(key, path, meta, tmp_path).result is PushResult.PUSHED
    assert remote.push(key, path, meta, tmp_path).result is PushResult.PRESENT  # a second push changes nothing
    assert tags(registry, "rs/roundtrip") == [key]

    dest = tmp_path / "pulled"
    dest.mkdir()
    pulled = remote.pull(key, dest)
    assert pulled == {k: v for k, v in meta.items() if k not in ("created", "files")}
    for name in ("sub/data.txt", "disk.raw"):
        assert sha256_file(dest / name) == sha256_file(path / name)
    # The holes stay holes: a pulled raw disk takes what its data takes, not its size.
    assert (dest / "disk.raw").stat().st_blocks * 512 < 1 << 20
    assert remote.pull("b" * 64, tmp_path) is None


def test_differing_push_is_a_reproducibility_failure(registry: Server, tmp_path: Path) -> None:  # noqa: F811
    key = "c" * 64
    remote = RegistryStore(url(registry, "rs/conflict"))
    first, meta = make_entry(tmp_path / "first", key, b"one")
    second, _ = make_entry(tmp_path / "second", key, b"two")
    assert remote.push(key, first, meta, tmp_path).result is PushResult.PUSHED
    pushed = remote.push(key, second, meta, tmp_path)
    assert pushed.result is PushResult.CONFLICT
    ours, theirs = sha256_file(second / "disk.raw"), sha256_file(first / "disk.raw")
    assert any(f"ours sha256:{ours} theirs sha256:{theirs}" in line for line in pushed.differences)
    dest = tmp_path / "pulled"
    dest.mkdir()
    remote.pull(key, dest)
    assert sha256_file(dest / "disk.raw") == theirs  # the first push stays


def test_tampered_blob_is_refused(registry: Server, tmp_path: Path) -> None:  # noqa: F811
    key = "d" * 64
    path, meta = make_entry(tmp_path / "a", key, b"one")
    remote = RegistryStore(url(registry, "rs/tamper"))
    remote.push(key, path, meta, tmp_path)
    entry = remote.lookup(key)
    assert entry is not None
    layer = next(f for f in entry.files if f.path == "sub/data.txt")
    blob = blob_file(registry, layer.blob)
    data = bytearray(blob.read_bytes())
    data[-9] ^= 0xFF  # in the gzip trailer's neighbourhood: still a gzip stream, other bytes
    blob.write_bytes(bytes(data))
    dest = tmp_path / "pulled"
    dest.mkdir()
    with pytest.raises(RemoteError, match="does not match its digest"):
        remote.pull(key, dest)


@pytest.mark.parametrize("title", ["../escape", "/etc/passwd", "meta.json", "a/../../b"])
def test_foreign_manifest_is_refused(registry: Server, tmp_path: Path, title: str) -> None:  # noqa: F811
    key = "e" * 64
    path, meta = make_entry(tmp_path / "a", key, b"one")
    remote = RegistryStore(url(registry, "rs/foreign"))
    remote.push(key, path, meta, tmp_path)  # replaces the previous case's malformed tag
    client, repo = repository(url(registry, "rs/foreign"))  # another client writes the tag behind our back
    resp = requests.get(f"http://127.0.0.1:{registry.port}/v2/{repo}/manifests/{key}", timeout=10,
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    body = resp.json()
    body["layers"][0]["annotations"]["org.opencontainers.image.title"] = title
    client.put_manifest(repo, key, json.dumps(body).encode())
    dest = tmp_path / "pulled"
    dest.mkdir()
    with pytest.raises(RemoteError, match="outside its entry"):
        remote.pull(key, dest)
    assert not (tmp_path / "escape").exists() and list(dest.iterdir()) == []


def _push_worker(args: tuple[str, str, str, str]) -> str:
    target, key, entry, scratch = args
    store = Store(Path(entry))
    found = store.get(key)
    assert found is not None
    return RegistryStore(target).push(key, found.path, found.meta, Path(scratch)).result.value


def test_two_workers_push_one_key_at_once(registry: Server, tmp_path: Path) -> None:  # noqa: F811
    key = "f" * 64
    target = url(registry, "rs/race")
    # Two machines that built the same files: each its own local store, the same bytes, other mtimes.
    make_entry(tmp_path / "m1", key, b"same", big=4 << 20)
    make_entry(tmp_path / "m2", key, b"same", big=0)
    src = Store(tmp_path / "m1").object_dir(key) / "disk.raw"
    dst = Store(tmp_path / "m2").object_dir(key) / "disk.raw"
    dst.write_bytes(src.read_bytes())  # same content as m1 (the random part included)
    meta = json.loads((dst.parent / "meta.json").read_text())
    (dst.parent / "meta.json").unlink()
    Store.commit_meta(dst.parent, meta)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_push_worker, [(target, key, str(tmp_path / m), str(tmp_path)) for m in ("m1", "m2")])
    assert set(results) <= {PushResult.PUSHED.value, PushResult.PRESENT.value}, results
    assert tags(registry, "rs/race") == [key]
    dest = tmp_path / "pulled"
    dest.mkdir()
    RegistryStore(target).pull(key, dest)
    assert sha256_file(dest / "disk.raw") == sha256_file(src)


def test_killed_push_leaves_no_entry(registry: Server, tmp_path: Path) -> None:  # noqa: F811
    key = "9" * 64
    target = url(registry, "rs/killed")
    make_entry(tmp_path / "m", key, b"x", big=96 << 20)  # incompressible: a long upload
    uploads = registry.workdir / "data" / "docker/registry/v2/repositories/rs/killed/_uploads"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.integration.test_registry_store import _push_worker; "
         "_push_worker(tuple(sys.argv[1:]))", target, key, str(tmp_path / "m"), str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (uploads.is_dir() and any(uploads.iterdir())):
        assert child.poll() is None, "the push finished before it could be killed"
        time.sleep(0.05)
    assert uploads.is_dir(), "no upload started"
    child.send_signal(signal.SIGKILL)
    child.wait()
    remote = RegistryStore(target)
    assert remote.lookup(key) is None  # blobs may be there; the entry is not
    # The next push completes it, and the result pulls back verified.
    path = Store(tmp_path / "m").object_dir(key)
    meta = json.loads((path / "meta.json").read_text())
    assert remote.push(key, path, meta, tmp_path).result is PushResult.PUSHED
    dest = tmp_path / "pulled"
    dest.mkdir()
    remote.pull(key, dest)
    assert sha256_file(dest / "disk.raw") == sha256_file(path / "disk.raw")


def test_credentials_come_from_the_auth_file_and_never_show(auth_registry: Server, tmp_path: Path,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    key = "7" * 64
    path, meta = make_entry(tmp_path / "a", key, b"auth")
    target = url(auth_registry, "rs/private")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker/config.json of the machine running the tests
    with pytest.raises(RemoteError) as refused:  # no credentials: the registry says no, we say which
        RegistryStore(target).push(key, path, meta, tmp_path)
    assert "credentials" in refused.value.brief and "skopeo login" in refused.value.resolution
    token = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {f"127.0.0.1:{auth_registry.port}": {"auth": token}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    remote = RegistryStore(target)
    assert remote.push(key, path, meta, tmp_path).result is PushResult.PUSHED
    dest = tmp_path / "pulled"
    dest.mkdir()
    pulled = remote.pull(key, dest)
    assert sha256_file(dest / "disk.raw") == sha256_file(path / "disk.raw")
    # Nothing of the credentials in what the store says or holds: its name, metadata, the error, the artifact.
    seen = [remote.name, json.dumps(pulled), str(refused.value), refused.value.details or "",
            *(p.read_text(errors="replace") for p in (auth_registry.workdir / "data").rglob("*") if p.is_file()
              and p.stat().st_size < 1 << 20)]
    assert not any(secret in text for text in seen for secret in (REGISTRY_PASSWORD, token))
