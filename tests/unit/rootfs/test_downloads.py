"""Downloads, the build context and preflight with file:// URLs (no network, real files)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from assembler.config import resolve_image
from assembler.errors import ConfigError
from assembler.mirrors import MirrorMap
from assembler.rootfs import context as ctx
from assembler.rootfs.downloads import Download, DownloadError, fetch, load_downloads, materialize
from assembler.rootfs.preflight import Endpoint, PreflightError, check, registry_probe_url
from tests.helpers import REPO

PAYLOAD = b"#!/bin/sh\necho kubeadm\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()
UPSTREAM = "https://dl.k8s.io/release/v1.30.14/bin/linux/amd64/kubeadm"


@pytest.fixture()
def mirror(tmp_path: Path) -> MirrorMap:
    """dl.k8s.io served from a local directory through the mirror map."""
    served = tmp_path / "served" / "release" / "v1.30.14" / "bin" / "linux" / "amd64"
    served.mkdir(parents=True)
    (served / "kubeadm").write_bytes(PAYLOAD)
    return MirrorMap(urls={"https://dl.k8s.io/": (tmp_path / "served").as_uri() + "/"})


def _item(sha: str = SHA, **kw: object) -> Download:
    return Download.model_validate({"name": "kubeadm", "url": UPSTREAM, "sha256": sha, "dest": "downloads/kubeadm",
                                    **kw})


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "downloads").iterdir()) if (cache / "downloads").exists() else []


def test_fetch_through_the_mirror_into_the_content_addressed_cache(tmp_path: Path, mirror: MirrorMap) -> None:
    path = fetch(_item(), mirror, tmp_path / "cache")
    assert path == tmp_path / "cache" / "downloads" / SHA
    assert path.read_bytes() == PAYLOAD
    # A second fetch needs no source at all.
    assert fetch(_item(), MirrorMap(urls={"https://dl.k8s.io/": "file:///nonexistent/"}), tmp_path / "cache") == path


def test_wrong_checksum_is_a_clear_error_and_leaves_nothing(tmp_path: Path, mirror: MirrorMap) -> None:
    wrong = "0" * 64
    with pytest.raises(DownloadError) as err:
        fetch(_item(sha=wrong), mirror, tmp_path / "cache")
    text = str(err.value)
    assert "checksum mismatch for kubeadm" in text and wrong in text and SHA in text
    assert mirror.url(UPSTREAM) in text and "rewrote" in err.value.resolution
    assert _cache_files(tmp_path / "cache") == []


def test_corrupted_cache_entry_is_refetched(tmp_path: Path, mirror: MirrorMap) -> None:
    entry = tmp_path / "cache" / "downloads" / SHA
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"garbage")
    assert fetch(_item(), mirror, tmp_path / "cache").read_bytes() == PAYLOAD


def test_materialize_copies_and_skips_unreachable_optional(tmp_path: Path, mirror: MirrorMap) -> None:
    missing = Download(name="kubelet", url="https://dl.k8s.io/nope/kubelet", sha256="1" * 64,
                       dest="downloads/kubelet", optional=True)
    results = materialize([_item(), missing], mirror, tmp_path / "cache", tmp_path / "ctx")
    assert [(r.name, r.status) for r in results] == [("kubeadm", "fetched"), ("kubelet", "skipped")]
    assert (tmp_path / "ctx" / "downloads" / "kubeadm").read_bytes() == PAYLOAD
    assert not (tmp_path / "ctx" / "downloads" / "kubelet").exists()
    again = materialize([_item()], mirror, tmp_path / "cache", tmp_path / "ctx2")
    assert again[0].status == "cached"


def test_required_unreachable_download_fails(tmp_path: Path) -> None:
    mirrors = MirrorMap(urls={"https://dl.k8s.io/": "file:///nonexistent/"})
    with pytest.raises(DownloadError, match="cannot fetch kubeadm from file:///nonexistent/release"):
        materialize([_item()], mirrors, tmp_path / "cache", tmp_path / "ctx")


def test_optional_download_with_wrong_checksum_still_fails(tmp_path: Path, mirror: MirrorMap) -> None:
    with pytest.raises(DownloadError, match="checksum mismatch"):
        materialize([_item(sha="2" * 64, optional=True)], mirror, tmp_path / "cache", tmp_path / "ctx")


@pytest.mark.parametrize("entry", [
    {"sha256": "ABC"},
    {"dest": "/etc/passwd"},
    {"dest": "downloads/../x"},
    {"dest": "files/kubeadm"},
    {"url": "ftp://x/y"},
    {"extra": 1},
])
def test_invalid_downloads_file(tmp_path: Path, entry: dict[str, object]) -> None:
    base = {"name": "k", "url": UPSTREAM, "sha256": SHA, "dest": "downloads/k"}
    (tmp_path / "downloads.yaml").write_text(__import__("yaml").safe_dump([{**base, **entry}]))
    with pytest.raises(ConfigError, match="invalid downloads file"):
        load_downloads(tmp_path / "downloads.yaml")


def _image(tmp_path: Path, containerfile: str, downloads: str = "") -> Path:
    image = tmp_path / "img"
    (image / "files").mkdir(parents=True)
    (image / "Containerfile").write_text(containerfile)
    (image / "files" / "x").write_text("x")
    if downloads:
        (image / "downloads.yaml").write_text(downloads)
    return image


DOWNLOADS = f"- {{name: kubeadm, url: '{UPSTREAM}', sha256: {SHA}, dest: downloads/kubeadm}}\n"


def test_mirror_args_and_base_reference(tmp_path: Path) -> None:
    image = _image(tmp_path, "ARG BASE_IMAGE=ubuntu@sha256:" + "c" * 64 + "\nFROM ${BASE_IMAGE}\n"
                   "ARG APT_MIRROR=http://snapshot.ubuntu.com/ubuntu/20260801T000000Z\nARG OTHER=1\n")
    spec = resolve_image(str(image))
    assert ctx.base_reference(spec.containerfile) == "ubuntu@sha256:" + "c" * 64
    mirrors = MirrorMap(urls={"http://snapshot.ubuntu.com/ubuntu/": "http://m/snap/"},
                        registries={"docker.io/": "r.internal/hub/"})
    assert ctx.mirror_args(spec, mirrors) == {
        "BASE_IMAGE": "r.internal/hub/library/ubuntu@sha256:" + "c" * 64,
        "APT_MIRROR": "http://m/snap/20260801T000000Z",
    }


def test_prepare_context_puts_verified_downloads_in_a_copy(tmp_path: Path, mirror: MirrorMap) -> None:
    image = _image(tmp_path, "FROM localhost/assembler/base:debian-12\nCOPY downloads/ /tmp/dl/\n", DOWNLOADS)
    spec = resolve_image(str(image))
    prepared = ctx.prepare_context(spec, tmp_path / "cache", tmp_path / "work", mirrors=mirror)
    assert prepared.path == tmp_path / "work" / "context"
    assert (prepared.path / "downloads" / "kubeadm").read_bytes() == PAYLOAD
    assert (prepared.path / "files" / "x").is_file()
    assert not (image / "downloads").exists()  # the image directory is left alone
    assert prepared.downloads == [{"name": "kubeadm", "url": mirror.url(UPSTREAM), "sha256": SHA,
                                   "dest": "downloads/kubeadm", "status": "fetched"}]


def test_prepare_context_without_downloads_builds_in_place(tmp_path: Path) -> None:
    image = _image(tmp_path, "FROM localhost/assembler/base:debian-12\n")
    prepared = ctx.prepare_context(resolve_image(str(image)), tmp_path / "cache", tmp_path / "work")
    assert prepared.path == image.resolve() and prepared.downloads == []


def test_context_material_holds_pins_not_mirrors(tmp_path: Path, mirror: MirrorMap,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image(tmp_path, "FROM localhost/assembler/base:debian-12\n", DOWNLOADS)
    spec = resolve_image(str(image))
    plain = ctx.context_material(spec)
    (tmp_path / "m.yaml").write_text("urls: {https://dl.k8s.io/: http://elsewhere/}\n")
    monkeypatch.setenv("ASSEMBLER_MIRRORS", str(tmp_path / "m.yaml"))
    assert ctx.context_material(spec) == plain
    assert plain["downloads"][0]["sha256"] == SHA and "url" not in plain["downloads"][0]


def test_preflight_lists_every_unreachable_endpoint(tmp_path: Path) -> None:
    endpoints = [Endpoint("file:///nonexistent/a", "download a", "https://dl.k8s.io/a"),
                 Endpoint("file:///nonexistent/b", "download b", "https://github.com/b"),
                 Endpoint((tmp_path).as_uri(), "download here", "https://dl.k8s.io/c"),
                 Endpoint("file:///nonexistent/d", "download d", "https://dl.k8s.io/d", required=False)]
    with pytest.raises(PreflightError) as err:
        check(endpoints, MirrorMap(), image="img")
    text = str(err.value)
    assert "cannot reach 2 external endpoint(s)" in text
    assert "file:///nonexistent/a (download a)" in text and "file:///nonexistent/b" in text
    assert "https://dl.k8s.io/" in err.value.resolution and "https://github.com/" in err.value.resolution
    assert "ASSEMBLER_MIRRORS" in err.value.resolution
    assert check(endpoints[2:], MirrorMap(), image="img") == {"file:///nonexistent/d": "no such file"}


def test_registry_probe_url() -> None:
    assert registry_probe_url("docker.io/library/ubuntu@sha256:x") == "https://registry-1.docker.io/v2/"
    assert registry_probe_url("r.internal:5000/hub/ubuntu@sha256:x") == "https://r.internal:5000/v2/"


def test_twin_downloads_are_all_optional() -> None:
    items = load_downloads(REPO / "Containerfiles" / "debian-12-k8s-node" / "downloads.yaml")
    assert items and all(i.optional for i in items)
    assert os.path.basename(items[0].dest) == "kubeadm"


def test_optional_availability_is_decided_before_the_key_and_honoured(tmp_path: Path, mirror: MirrorMap,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served" / "release" / "v1.30.14" / "bin" / "linux" / "amd64" / "kubeadm"
    (tmp_path / "m.yaml").write_text(f"urls: {{'https://dl.k8s.io/': '{mirror.urls['https://dl.k8s.io/']}'}}\n")
    monkeypatch.setenv("ASSEMBLER_MIRRORS", str(tmp_path / "m.yaml"))
    optional = DOWNLOADS.replace("dest: downloads/kubeadm}", "dest: downloads/kubeadm, optional: true}")
    image = _image(tmp_path, "FROM localhost/assembler/base:debian-12\n", optional)
    spec, cache = resolve_image(str(image)), tmp_path / "cache"
    # Never probed: a dry run's key counts it as available.
    assert ctx.recorded_availability(spec, cache).decided == {}
    assert ctx.context_material(spec, ctx.recorded_availability(spec, cache))["downloads"][0]["available"] is True
    # Reachable when probed: part of the key, and then required (a vanished file is an error, not a skip).
    reachable = ctx.probe_optional(spec, cache)
    assert ctx.context_material(spec, reachable)["downloads"][0]["available"] is True
    served.unlink()
    with pytest.raises(PreflightError, match="download kubeadm"):
        ctx.prepare_context(spec, cache, tmp_path / "work", availability=reachable)
    # Unreachable when probed: the key says so, the build skips it without asking again, and a later dry run
    # reads the same answer from the cache without a probe.
    gone = ctx.probe_optional(spec, cache)
    assert ctx.context_material(spec, gone)["downloads"][0]["available"] is False
    assert ctx.recorded_availability(spec, cache) == gone
    served.write_bytes(PAYLOAD)
    prepared = ctx.prepare_context(spec, cache, tmp_path / "work", availability=gone)
    assert prepared.downloads[0]["status"] == "skipped" and prepared.downloads[0]["reason"] == "no such file"
    assert list((prepared.path / "downloads").iterdir()) == []
    # Once fetched into the cache it is available, whatever was recorded.
    fetched = ctx.probe_optional(spec, cache)
    ctx.prepare_context(spec, cache, tmp_path / "work", availability=fetched)
    assert ctx.recorded_availability(spec, cache).state(load_downloads(image / "downloads.yaml")[0]) is True
