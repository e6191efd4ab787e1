"""Real local servers for the publish tests (registry, moto, Azurite) and a small fake build output.

Each server runs on 127.0.0.1 on a free port, session-scoped, and is stopped at the end; `stop()`/`start()`
let a test cut a server off mid-upload and bring it back with the same data directory.
Import the fixtures into a test module: `from tests.integration.publish_servers import registry  # noqa`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assembler import formats
from assembler.fsutil import sha256_file

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft; not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server subprocess (the tests' only Popen) that can be stopped and started again on its port."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.port, self.workdir = name, argv, port, workdir
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


REGISTRY_USER, REGISTRY_PASSWORD = "alice", "s3cret-registry-pw"


def _registry(work: Path, name: str, extra: dict[str, object]) -> Server:
    """Debian's docker-registry (distribution 2.8) on a free port, plain HTTP, storage under `work`."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    assert binary, "docker-registry is not installed: apt-get install docker-registry (scripts/setup.sh)"
    port = free_port()
    config = work / "config.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "assembler-test-upload-state"}, **extra,
    }))
    return Server(name, [binary, "serve", str(config)], port, work)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A registry without auth."""
    server = _registry(tmp_path_factory.mktemp("registry"), "registry", {})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A registry requiring HTTP Basic credentials (htpasswd, bcrypt): REGISTRY_USER/REGISTRY_PASSWORD."""
    import bcrypt

    work = tmp_path_factory.mktemp("auth-registry")
    hashed = bcrypt.hashpw(REGISTRY_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (work / "htpasswd").write_text(f"{REGISTRY_USER}:{hashed}\n")
    server = _registry(work, "auth-registry",
                       {"auth": {"htpasswd": {"realm": "assembler-test", "path": str(work / "htpasswd")}}})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """moto's standalone server (S3, EC2, EBS) answering the real boto3 calls."""
    binary = Path(sys.executable).parent / "moto_server"
    assert binary.exists(), "moto_server missing: pip install 'moto[server]' (the dev extra has it)"
    work = tmp_path_factory.mktemp("moto")
    port = free_port()
    server = Server("moto", [str(binary), "-H", "127.0.0.1", "-p", str(port)], port, work)
    server.start()
    yield server
    server.stop()


def azurite_binary() -> str:
    local = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    found = str(local) if local.exists() else shutil.which("azurite-blob")
    assert found, "azurite missing: npm install --prefix .tools azurite (scripts/setup.sh does it)"
    return found


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Azurite's blob service with the well-known development account, data kept in a temp dir."""
    work = tmp_path_factory.mktemp("azurite")
    port = free_port()
    argv = [azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(work / "data"),
            "--skipApiVersionCheck", "--loose", "--silent"]
    server = Server("azurite", argv, port, work)
    server.start()
    yield server
    server.stop()


def azurite_connection_string(server: Server) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{server.port}/{AZURITE_ACCOUNT};")


# ------------------------------------------------------------------------------------- fake build outputs


def make_disk(path: Path, size: int = 64 * MIB, seed: int = 1) -> Path:
    """A sparse raw disk with a GPT and a few MiB of pseudo-random data at known offsets."""
    with path.open("wb") as handle:
        handle.truncate(size)
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:0", "-t", "1:8300", str(path)], check=True,
                   capture_output=True)
    block = (seed.to_bytes(4, "little") * (MIB // 4))
    with path.open("r+b") as handle:
        for index, offset in enumerate((2 * MIB, 10 * MIB, 33 * MIB)):
            handle.seek(offset)
            handle.write(bytes((b + index + seed) % 256 for b in block[:4096]) * (MIB // 4096))
    return path


def make_outputs(root: Path, image: str, fmts: list[str], *, seed: int = 1,
                 firmware: tuple[str, ...] = ("bios", "uefi")) -> Path:
    """out/IMAGE/ with IMAGE.raw, the requested formats (real conversions) and a manifest.json."""
    out = root / image
    out.mkdir(parents=True)
    raw = make_disk(out / f"{image}.raw", seed=seed)
    outputs = [{"format": "raw", "path": raw.name, "sha256": sha256_file(raw)}]
    for fmt in fmts:
        options = {"load": False} if fmt == "kubevirt" else None
        result = formats.convert(raw, fmt, out / formats.output_name(image, fmt), image_name=image,
                                 options=options, source_date_epoch=1_700_000_000)
        outputs.append({"format": fmt, "path": result.path.name, "sha256": result.sha256})
    manifest = {
        "image": image, "source_date_epoch": 1_700_000_000,
        "oci": {"digest": "sha256:" + "ab" * 32, "layers": []},
        "rootfs": {"sha256": "cd" * 32},
        "outputs": outputs,
        "disk": {"layout": "gpt", "partitions": [], "firmware": list(firmware)},
        "tools": {"assembler": "0.1.0"}, "phases": [],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
