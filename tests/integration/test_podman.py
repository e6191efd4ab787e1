"""The same engine adapter against Podman's Docker-compatible API (`podman system service`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from assembler import engine
from assembler.rootfs.bootstrap import ensure_base, load_recipe
from assembler.rootfs.flatten import flatten

FIXTURES = Path(__file__).parent / "fixtures"
SDE = 1_747_699_200  # the SOURCE_DATE_EPOCH of the session fixtures (conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.podman]

# Podman 4.3 (Debian 12) defaults to crun and to ulimits this kernel/container setup refuses.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""


@pytest.fixture(scope="module")
def podman_client(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
                  ) -> Iterator[docker.DockerClient]:
    podman = shutil.which("podman")
    assert podman, "podman is not installed: apt-get install podman (make setup does)"
    workdir = tmp_path_factory.mktemp("podman")
    conf = workdir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    sock = workdir / "podman.sock"
    log = (workdir / "service.log").open("wb")
    service = subprocess.Popen([podman, "system", "service", "--time=0", f"unix://{sock}"],
                               env={**os.environ, "CONTAINERS_CONF": str(conf)}, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        monkeypatch_module.setenv("DOCKER_HOST", f"unix://{sock}")
        yield engine.connect(start=False)
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_podman_identifies_itself(podman_client: docker.DockerClient) -> None:
    assert engine.engine_info(podman_client).name == "podman"


def test_build_save_and_flatten_through_podman(podman_client: docker.DockerClient, shared_cache: Path,
                                               tmp_path: Path) -> None:
    base_id = ensure_base(podman_client, load_recipe("debian-12"), shared_cache).image_id
    assert engine.image_exists(podman_client, "localhost/assembler/base:debian-12")
    built = engine.build_image(podman_client, FIXTURES / "small", tag="localhost/assembler-test/small:podman",
                               buildargs={"SOURCE_DATE_EPOCH": str(SDE)})
    assert built.id.removeprefix("sha256:") != base_id.removeprefix("sha256:")
    assert len(built.steps) >= 3 and built.steps[0].created_by.startswith("mmdebstrap")
    archive = engine.save_image(podman_client, built.id, tmp_path / "image.tar")
    result = flatten(archive, tmp_path / "rootfs.tar", source_date_epoch=SDE)
    with tarfile.open(result.path) as tar:
        names = set(tar.getnames())
        release = tar.extractfile("etc/small-release")
        assert release is not None and release.read() == f"built at {SDE}\n".encode()
    assert "opt/hello.txt" in names and "etc/issue.net" not in names
    engine.remove_image(podman_client, built.tag, force=True)
