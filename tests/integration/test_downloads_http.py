"""Pinned downloads over real HTTP: a local server stands in for dl.k8s.io through the mirror map."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from assembler import engine
from assembler.config import resolve_image
from assembler.mirrors import MIRRORS_ENV
from assembler.rootfs.context import prepare_context
from assembler.rootfs.downloads import DownloadError

pytestmark = pytest.mark.integration

PAYLOAD = b"#!/bin/sh\necho 'kubeadm stand-in v1.30.14'\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()
UPSTREAM = "https://dl.k8s.io/release/v1.30.14/bin/linux/amd64/kubeadm"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT/ serving release/v1.30.14/bin/linux/amd64/kubeadm."""
    root = tmp_path / "www"
    (root / "release/v1.30.14/bin/linux/amd64").mkdir(parents=True)
    (root / "release/v1.30.14/bin/linux/amd64/kubeadm").write_bytes(PAYLOAD)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def mirrored(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "mirrors.yaml").write_text(f"urls:\n  https://dl.k8s.io/: {server}\n")
    monkeypatch.setenv(MIRRORS_ENV, str(tmp_path / "mirrors.yaml"))
    return server


def _image(tmp_path: Path, sha: str) -> Path:
    image = tmp_path / "img"
    image.mkdir()
    (image / "Containerfile").write_text(
        "FROM localhost/assembler/base:debian-12\n"
        "COPY downloads/ /tmp/dl/\n"
        "RUN install -m 0755 /tmp/dl/kubeadm /usr/bin/kubeadm && /usr/bin/kubeadm > /kubeadm.out\n")
    (image / "downloads.yaml").write_text(
        f"- name: kubeadm\n  url: {UPSTREAM}\n  sha256: {sha}\n  dest: downloads/kubeadm\n")
    return image


def test_right_checksum_is_fetched_and_built(mirrored: str, tmp_path: Path, engine_client: docker.DockerClient,
                                             debian_base: str) -> None:
    spec = resolve_image(str(_image(tmp_path, SHA)))
    prepared = prepare_context(spec, tmp_path / "cache", tmp_path / "work")
    assert prepared.downloads[0]["url"] == mirrored + "release/v1.30.14/bin/linux/amd64/kubeadm"
    assert prepared.downloads[0]["status"] == "fetched"
    assert (tmp_path / "cache" / "downloads" / SHA).read_bytes() == PAYLOAD
    built = engine.build_image(engine_client, prepared.path, tag="assembler-test/downloads:latest",
                               buildargs={"SOURCE_DATE_EPOCH": "1700000000", **prepared.build_args})
    out = engine.run_in_container(engine_client, built.id, ["cat", "/kubeadm.out"])
    assert "kubeadm stand-in v1.30.14" in out
    engine.remove_image(engine_client, built.id, force=True)


def test_wrong_checksum_fails_the_build_clearly(mirrored: str, tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"what upstream published").hexdigest()
    spec = resolve_image(str(_image(tmp_path, wrong)))
    with pytest.raises(DownloadError) as err:
        prepare_context(spec, tmp_path / "cache", tmp_path / "work")
    text = str(err.value)
    assert "checksum mismatch for kubeadm" in text
    assert f"expected sha256 {wrong}" in text and f"actual   sha256 {SHA}" in text
    assert mirrored in text and UPSTREAM in err.value.resolution
    cache = tmp_path / "cache" / "downloads"
    assert not cache.exists() or list(cache.iterdir()) == []  # no entry, no partial file
