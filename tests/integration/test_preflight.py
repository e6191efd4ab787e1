"""Preflight against real sockets: unreachable mirrors fail fast with an error that names them."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from assembler.config import resolve_image
from assembler.mirrors import MIRRORS_ENV
from assembler.rootfs.context import prepare_context
from assembler.rootfs.preflight import PreflightError

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ubuntu_k8s_with_unreachable_mirrors_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    (tmp_path / "mirrors.yaml").write_text(
        "urls:\n"
        f"  https://dl.k8s.io/: {dead}/k8s/\n"
        f"  https://github.com/: {dead}/github/\n"
        f"  http://snapshot.ubuntu.com/ubuntu: {dead}/ubuntu\n"
        "registries:\n"
        f"  docker.io/: 127.0.0.1:{_closed_port()}/hub/\n")
    monkeypatch.setenv(MIRRORS_ENV, str(tmp_path / "mirrors.yaml"))
    spec = resolve_image("ubuntu-k8s-1.30")
    start = time.monotonic()
    with pytest.raises(PreflightError) as err:
        prepare_context(spec, tmp_path / "cache", tmp_path / "work")
    elapsed = time.monotonic() - start
    assert elapsed < 6, f"preflight took {elapsed:.1f} s"
    text = str(err.value)
    assert "ubuntu-k8s-1.30: cannot reach 9 external endpoint(s)" in text  # 7 downloads, apt, registry
    assert f"{dead}/k8s/release/v1.30.14/bin/linux/amd64/kubeadm (download kubeadm)" in text
    assert f"{dead}/ubuntu/20260801T000000Z (apt mirror APT_MIRROR)" in text
    assert "/v2/ (registry for base image 127.0.0.1:" in text
    assert "Connection refused" in text
    assert MIRRORS_ENV in err.value.resolution and str(tmp_path / "mirrors.yaml") in err.value.resolution
    assert not (tmp_path / "work").exists()  # nothing was fetched or copied


def test_blackholed_mirror_times_out_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A TEST-NET-1 address (RFC 5737): packets go nowhere, so only the probe timeout ends the wait.
    (tmp_path / "mirrors.yaml").write_text("urls:\n  https://dl.k8s.io/: http://192.0.2.1/k8s/\n")
    monkeypatch.setenv(MIRRORS_ENV, str(tmp_path / "mirrors.yaml"))
    image = tmp_path / "img"
    image.mkdir()
    (image / "Containerfile").write_text("FROM localhost/assembler/base:debian-12\n")
    (image / "downloads.yaml").write_text(
        "- {name: kubeadm, url: 'https://dl.k8s.io/release/v1.30.14/bin/linux/amd64/kubeadm', "
        "sha256: bf1f8af81af8ecf003cbc03a8700c6e94a74c183ee092bbc77b92270ada2be70, dest: downloads/kubeadm}\n")
    start = time.monotonic()
    with pytest.raises(PreflightError) as err:
        prepare_context(resolve_image(str(image)), tmp_path / "cache", tmp_path / "work")
    assert "http://192.0.2.1/k8s/release/v1.30.14/bin/linux/amd64/kubeadm (download kubeadm)" in str(err.value)
    assert time.monotonic() - start < 6
