"""Build secrets through the real engine and the real rootfs phase: RUN steps see them, nothing keeps them.

One image on the debian-12 base (no packages installed, so it builds in seconds) mounts a secret file and an
environment secret the BuildKit way; the steps record digests of what they saw. The values must then be
nowhere: not in the rootfs, not in out/, not in the cache's entry, not in the engine's image history, not in
the build's output even when a step prints them. A step that copies a value into the image fails the build.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.helpers import cli, scratch_dir

pytestmark = pytest.mark.integration

FILE_VALUE = b"file-secret-7f3a9c2e51d0\n"
ENV_VALUE = "env-secret-b84d16e0c9a7"
CONTAINERFILE = """\
FROM localhost/assembler/base:debian-12
RUN echo before > /etc/before
RUN --mount=type=secret,id=netrc \\
    --mount=type=secret,id=api,env=API_TOKEN \\
    sha256sum /run/secrets/netrc | cut -c1-64 > /etc/netrc-seen && \\
    stat -c %a /run/secrets/netrc > /etc/netrc-mode && \\
    printf %s "$API_TOKEN" | sha256sum | cut -c1-64 > /etc/api-seen && \\
    echo "printed by the step: $API_TOKEN"
RUN --mount=type=secret,id=netrc,target=/root/.netrc,mode=0440 stat -c %a /root/.netrc > /etc/target-mode
RUN echo after > /etc/after
"""


@dataclass(frozen=True)
class SecretBuild:
    root: Path
    out: Path
    cache: Path
    stdout: str
    stderr: str


def _image(root: Path, containerfile: str) -> Path:
    image = root / "secret-demo"
    image.mkdir(parents=True)
    (image / "Containerfile").write_text(containerfile)
    (root / "netrc").write_bytes(FILE_VALUE)  # outside the image directory, as a user keeps it
    (image / "image.yaml").write_text(
        "base: debian-12\nsecrets:\n  netrc: {file: ../netrc}\n  api: {env: TEST_API_TOKEN}\n")
    return image


@pytest.fixture(scope="module")
def secret_build(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path,
                 debian_base: str) -> Iterator[SecretBuild]:
    with scratch_dir(tmp_path_factory, "secrets") as root:
        yield _secret_build(root, shared_cache)


def _secret_build(root: Path, shared_cache: Path) -> SecretBuild:
    image = _image(root, CONTAINERFILE)
    cache = root / "cache"
    (cache / "base").parent.mkdir(parents=True, exist_ok=True)
    (cache / "base").symlink_to(shared_cache / "base")  # the bootstrapped base, not its phase entries
    proc = cli("--debug", "build", str(image), "--phases", "rootfs", "--cache-dir", str(cache),
               "--output", str(root / "out"), "--no-boot-test", env={"TEST_API_TOKEN": ENV_VALUE})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SecretBuild(root, root / "out", cache, proc.stdout, proc.stderr)


def _rootfs_file(build: SecretBuild, name: str) -> str:
    with tarfile.open(build.out / "secret-demo-rootfs.tar") as tar:
        return tar.extractfile(name).read().decode().strip()  # type: ignore[union-attr]


def test_run_steps_see_the_secrets_with_their_modes(secret_build: SecretBuild) -> None:
    assert _rootfs_file(secret_build, "etc/netrc-seen") == hashlib.sha256(FILE_VALUE).hexdigest()
    assert _rootfs_file(secret_build, "etc/api-seen") == hashlib.sha256(ENV_VALUE.encode()).hexdigest()
    assert _rootfs_file(secret_build, "etc/netrc-mode") == "400"
    assert _rootfs_file(secret_build, "etc/target-mode") == "440"
    manifest = json.loads((secret_build.out / "manifest.json").read_text())
    assert manifest["secrets"] == [{"id": "api", "served": 1}, {"id": "netrc", "served": 2}]


def test_no_value_in_the_rootfs_out_cache_or_output(secret_build: SecretBuild) -> None:
    needles = (FILE_VALUE.strip(), ENV_VALUE.encode())
    with tarfile.open(secret_build.out / "secret-demo-rootfs.tar") as tar:
        names = tar.getnames()
    assert "run/secrets" not in names and "root/.netrc" not in names
    files = [p for d in (secret_build.out, secret_build.cache / "objects", secret_build.cache / "refs")
             for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "rootfs.tar" for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(n in data for n in needles), path
    assert "printed by the step: ***" in secret_build.stderr + secret_build.stdout
    for text in (secret_build.stdout, secret_build.stderr):
        assert not any(n.decode() in text for n in needles)


def test_no_value_in_the_engine_image(secret_build: SecretBuild, engine_client: docker.DockerClient) -> None:
    image = engine_client.images.get("localhost/assembler/secret-demo:latest")
    history = json.dumps(engine_client.api.history(image.id)) + json.dumps(image.attrs)
    assert "mount=type=secret" not in history  # what the engine ran is the rewritten, classic RUN
    assert FILE_VALUE.strip().decode() not in history and ENV_VALUE not in history
    # Nor the endpoint and its token: no_proxy stays out of the history (the prefix alone is in the RUN text).
    assert not re.search(r"assembler-secret-[0-9]+-[0-9a-f]{32}", history)


def test_a_step_that_keeps_a_value_fails_the_build(tmp_path: Path, secret_build: SecretBuild) -> None:
    image = _image(tmp_path, CONTAINERFILE.replace(
        "RUN echo after > /etc/after", "RUN --mount=type=secret,id=api,env=T sh -c 'echo \"$T\" > /etc/leak'"))
    proc = cli("build", str(image), "--phases", "rootfs", "--cache-dir", str(secret_build.cache),
               "--output", str(tmp_path / "out"), "--no-boot-test", env={"TEST_API_TOKEN": ENV_VALUE})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "secret's value is in the image" in proc.stderr and "/etc/leak: secret api" in proc.stderr
    assert "Traceback" not in proc.stderr and ENV_VALUE not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


def test_a_missing_secret_is_one_clear_error_before_the_engine(tmp_path: Path) -> None:
    image = _image(tmp_path, CONTAINERFILE)
    proc = cli("build", str(image), "--phases", "rootfs", "--cache-dir", str(tmp_path / "cache"),
               "--output", str(tmp_path / "out"), "--no-boot-test", env={"TEST_API_TOKEN": ""})
    assert proc.returncode == 1
    assert "secrets of secret-demo are not available" in proc.stderr
    assert "TEST_API_TOKEN is not set" in proc.stderr and "fix:" in proc.stderr
    assert not (tmp_path / "out").exists()
