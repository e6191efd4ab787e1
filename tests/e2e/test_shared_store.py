"""Two machines sharing one build through the registry store (a real registry on 127.0.0.1).

Worker A is this session's debian-12 build (its cache), pushed with --cache-to; worker B starts with an
empty cache and --cache-from. Each worker is a separate `assembler` process with its own cache: they share
only the registry, as two machines would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from assembler.fsutil import sha256_file
from assembler.remote import RegistryStore
from tests.e2e.conftest import Built, build_formats
from tests.helpers import REPO, cli, scratch_dir
from tests.integration.publish_servers import Server, registry  # noqa: F401

pytestmark = pytest.mark.e2e
FORMATS = ("raw", "qcow2")


def store_url(server: Server, repo: str) -> str:
    return f"http://127.0.0.1:{server.port}/{repo}"


def tags(server: Server, repo: str) -> set[str]:
    resp = requests.get(f"http://127.0.0.1:{server.port}/v2/{repo}/tags/list", timeout=10)
    return set(resp.json().get("tags") or []) if resp.ok else set()


def sources_of(manifest: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["source"] for p in manifest["phases"]}


def sources(built: Built) -> dict[str, str]:
    return sources_of(built.manifest)


@pytest.fixture(scope="module")
def worker_a(debian12: Built, registry: Server,  # noqa: F811
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    with scratch_dir(tmp_path_factory, "worker-a") as out:
        yield build_formats("debian-12", out, debian12.cache, FORMATS,
                            "--cache-to", store_url(registry, "e2e/phases"))


@pytest.fixture(scope="module")
def worker_b(worker_a: Built, registry: Server,  # noqa: F811
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    with scratch_dir(tmp_path_factory, "worker-b") as root:
        yield build_formats("debian-12", root / "out", root / "cache", FORMATS,
                            "--cache-from", store_url(registry, "e2e/phases"))


def test_a_pushes_every_phase_and_its_base(worker_a: Built, registry: Server) -> None:  # noqa: F811
    pushed = {p["name"]: p["pushed"] for p in worker_a.manifest["phases"]}
    assert set(pushed) == {"rootfs", "disk", "convert:qcow2", "boot"}
    assert all(v in ("pushed", "already in the registry") for v in pushed.values()), pushed
    keys = {p["key"] for p in worker_a.manifest["phases"]}
    held = tags(registry, "e2e/phases")
    assert keys <= held
    assert any(t.startswith("base-") for t in held), held  # the bootstrapped base, beside the rootfs


def test_b_recomputes_nothing_and_gets_the_same_outputs(worker_a: Built, worker_b: Built) -> None:
    name = "registry 127.0.0.1"
    assert all(src.startswith(name) for src in sources(worker_b).values()), sources(worker_b)
    for fmt in FORMATS:
        assert sha256_file(worker_b.output(fmt)) == sha256_file(worker_a.output(fmt)), fmt
    assert {p["key"] for p in worker_b.manifest["phases"]} == {p["key"] for p in worker_a.manifest["phases"]}
    # Nothing of A's host leaks through the store into B's record: no credentials, no local paths.
    text = json.dumps(worker_b.manifest)
    assert str(worker_a.cache) not in text


def test_b_builds_the_k8s_node_on_the_pulled_base(worker_b: Built, registry: Server) -> None:  # noqa: F811
    out = worker_b.out.parent / "out-k8s"
    proc = cli("build", "debian-12-k8s-node", "--phases", "rootfs", "--output", str(out),
               "--cache-dir", str(worker_b.cache), "--cache-from", store_url(registry, "e2e/phases"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "pulled from 127.0.0.1" in proc.stderr and "bootstrapping base" not in proc.stderr, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sources_of(manifest) == {"rootfs": "built"}
    base = json.loads(next((worker_b.cache / "objects").glob(f"*/{manifest['phases'][0]['key']}/meta.json"))
                      .read_text())["base_entry"]
    assert (worker_b.cache / "base" / base / "image.tar").is_file()


def test_tampered_blob_is_refused_and_the_phase_rebuilt(worker_a: Built, registry: Server,  # noqa: F811
                                                         tmp_path: Path) -> None:
    target = store_url(registry, "e2e/tampered")
    disk_key = next(p["key"] for p in worker_a.manifest["phases"] if p["name"] == "disk")
    # A copy of A's store with the disk's BOM blob altered, as a compromised or broken registry would serve.
    build_formats("debian-12", tmp_path / "a", worker_a.cache, ("raw",), "--no-boot-test", "--cache-to", target)
    entry = RegistryStore(target).lookup(disk_key)
    assert entry is not None
    blob = next(f.blob for f in entry.files if f.path == "bom.spdx.json").removeprefix("sha256:")
    data = registry.workdir / "data" / "docker/registry/v2/blobs/sha256" / blob[:2] / blob / "data"
    original = data.read_bytes()
    raw = bytearray(original)
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    try:
        c = build_formats("debian-12", tmp_path / "c", tmp_path / "cache-c", ("raw",), "--no-boot-test",
                          "--cache-from", target)
    finally:  # blobs are shared by every repository of the registry: the other tests' entries hold this one too
        data.write_bytes(original)
    assert sources(c)["rootfs"].startswith("registry"), sources(c)
    assert sources(c)["disk"] == "built", sources(c)
    assert "refused" in c.stderr and "does not match its digest" in c.stderr
    assert sha256_file(c.output("raw")) == sha256_file(worker_a.output("raw"))  # rebuilt: the same bits


def _local_copy(cache: Path, dest: Path) -> None:
    """Hard links of a finished cache (entries are never modified in place): a second machine's cache."""
    for top in ("objects", "base"):
        shutil.copytree(cache / top, dest / top, copy_function=os.link,
                        ignore=shutil.ignore_patterns(".*"))


def test_two_workers_push_at_once_then_a_killed_push(worker_a: Built, registry: Server,  # noqa: F811
                                                     tmp_path: Path) -> None:
    target = store_url(registry, "e2e/race")
    for name in ("w1", "w2"):
        _local_copy(worker_a.cache, tmp_path / name)
    args = ["build", "debian-12", "--format", "raw", "--no-boot-test", "--cache-to", target]
    procs = [subprocess.Popen([sys.executable, "-m", "assembler.cli.main", *args, "--output", str(tmp_path / f"o{n}"),
                               "--cache-dir", str(tmp_path / f"w{n}")], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-3000:]
    manifests = [json.loads((tmp_path / f"o{n}" / "manifest.json").read_text()) for n in (1, 2)]
    keys = {p["key"] for p in manifests[0]["phases"]}
    assert keys == {p["key"] for p in manifests[1]["phases"]}
    assert keys <= tags(registry, "e2e/race")
    for m in manifests:  # each saw its own push or the other's, never a conflict
        assert all(p["pushed"] in ("pushed", "already in the registry") for p in m["phases"]), m["phases"]

    # A worker killed while it pushes (its first entry is in, the next on its way): whatever tags exist are
    # complete entries that pull back verified, and the one cut short does not exist.
    target = store_url(registry, "e2e/killed")
    killed = [a if a != store_url(registry, "e2e/race") else target for a in args]
    pusher = subprocess.Popen([sys.executable, "-m", "assembler.cli.main", *killed, "--output", str(tmp_path / "o3"),
                             "--cache-dir", str(tmp_path / "w1")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not tags(registry, "e2e/killed"):
        assert pusher.poll() is None, "the push finished before it could be killed"
        time.sleep(0.05)
    pusher.kill()
    pusher.wait()
    held = tags(registry, "e2e/killed")
    assert held and not keys <= held, held  # cut short after its first entry
    remote = RegistryStore(target)
    for tag in held:
        dest = tmp_path / "pulled" / tag
        dest.mkdir(parents=True)
        assert remote.pull(tag, dest) is not None
    # Building again from that store: what is complete is pulled, the rest built; the same disk either way.
    again = build_formats("debian-12", tmp_path / "o4", tmp_path / "w4", ("raw",), "--no-boot-test",
                          "--cache-from", target)
    came = sources(again)
    assert came["rootfs"].startswith("registry") and came["disk"] in ("built", came["rootfs"]), came
    assert sha256_file(again.output("raw")) == sha256_file(worker_a.output("raw"))


def test_matrix_run_computes_each_shared_phase_once(worker_a: Built, registry: Server,  # noqa: F811
                                                    tmp_path: Path) -> None:
    """Three entries, two workers with empty caches: the store holds A's phases; the VHD conversion two entries
    need is computed by one and pulled by the other, which then publishes it (oci, the same registry)."""
    spec = {
        "include": [{"image": "debian-12", "format": "qcow2"}, {"image": "debian-12", "format": "vhd"},
                    {"image": "debian-12", "format": "vhd", "provider": "oci"}],
        "publish": {"oci": {"registry": f"127.0.0.1:{registry.port}/e2e-matrix", "insecure": "true",
                            "containerdisk": "false", "artifacts": "vhd"}},
        "store": store_url(registry, "e2e/phases"),
    }
    (tmp_path / "matrix.yaml").write_text(json.dumps(spec))
    proc = cli("matrix", str(tmp_path / "matrix.yaml"), "--run", "--workers", "2", "--workdir", str(tmp_path / "w"),
               "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    entries = {e["name"]: e for e in report["entries"]}
    assert [(n, e["built"]) for n, e in entries.items() if e["built"]] == [("debian-12/vhd", ["convert:vhd"])]
    assert "convert:vhd" in entries["debian-12/vhd/oci"]["pulled"]
    assert {e["worker"] for e in entries.values()} == {0, 1}  # both workers took entries
    vhd = []
    for entry in entries.values():
        if entry["name"].startswith("debian-12/vhd"):
            out = tmp_path / "w" / "out" / str(entry["index"]) / "debian-12"
            outputs = json.loads((out / "manifest.json").read_text())["outputs"]
            vhd.append(out / next(o["path"] for o in outputs if o["format"] == "vhd"))
    assert len(vhd) == 2 and sha256_file(vhd[0]) == sha256_file(vhd[1])
    receipt = json.loads((tmp_path / "w" / "out" / "2" / "debian-12" / "publish-oci.json").read_text())
    assert any(item["kind"] == "artifact" for item in receipt["items"])
