from __future__ import annotations

from pathlib import Path

import pytest

from assembler.errors import ConfigError
from assembler.mirrors import MIRRORS_ENV, MirrorMap, load_mirror_map, normalize_image

KUBEADM = "https://dl.k8s.io/release/v1.30.14/bin/linux/amd64/kubeadm"
UBUNTU = "docker.io/library/ubuntu@sha256:" + "a" * 64


def test_defaults_are_identity() -> None:
    mirrors = MirrorMap()
    assert mirrors.url(KUBEADM) == KUBEADM
    assert mirrors.image(UBUNTU) == UBUNTU
    assert mirrors.url("https://example.org/x") == "https://example.org/x"


def test_url_prefix_rewrite_keeps_the_rest() -> None:
    mirrors = MirrorMap(urls={"https://dl.k8s.io/": "http://mirror.internal/k8s/"})
    assert mirrors.url(KUBEADM) == "http://mirror.internal/k8s/release/v1.30.14/bin/linux/amd64/kubeadm"
    assert mirrors.url("https://github.com/a/b") == "https://github.com/a/b"  # defaults still apply


def test_prefix_matches_on_a_path_boundary_and_longest_wins() -> None:
    mirrors = MirrorMap(urls={"http://deb.debian.org/debian": "http://m/debian",
                              "http://deb.debian.org/debian-security": "http://m/security"})
    assert mirrors.url("http://deb.debian.org/debian") == "http://m/debian"
    assert mirrors.url("http://deb.debian.org/debian/dists") == "http://m/debian/dists"
    assert mirrors.url("http://deb.debian.org/debian-security") == "http://m/security"
    only = MirrorMap(urls={"http://deb.debian.org/debian": "http://m/debian"})
    assert only.url("http://deb.debian.org/debian-security") == "http://deb.debian.org/debian-security"


def test_image_rewrite_keeps_the_digest() -> None:
    mirrors = MirrorMap(registries={"docker.io/": "registry.internal:5000/hub/"})
    assert mirrors.image(UBUNTU) == "registry.internal:5000/hub/library/ubuntu@sha256:" + "a" * 64
    assert mirrors.image("ubuntu@sha256:" + "b" * 64) == "registry.internal:5000/hub/library/ubuntu@sha256:" + "b" * 64
    assert mirrors.image("localhost/assembler/base:debian-12") == "localhost/assembler/base:debian-12"


@pytest.mark.parametrize(("ref", "full"), [
    ("ubuntu:24.04", "docker.io/library/ubuntu:24.04"),
    ("bitnami/kubectl", "docker.io/bitnami/kubectl"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    ("host:5000/x/y", "host:5000/x/y"),
    ("localhost/a:b", "localhost/a:b"),
])
def test_normalize_image(ref: str, full: str) -> None:
    assert normalize_image(ref) == full


def test_user_file_from_env_is_merged_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mirrors.yaml"
    path.write_text("urls:\n  https://dl.k8s.io/: http://127.0.0.1:9/k8s/\n"
                    "registries:\n  docker.io/: r.internal/hub/\n")
    monkeypatch.setenv(MIRRORS_ENV, str(path))
    mirrors = load_mirror_map()
    assert mirrors.source == str(path)
    assert mirrors.url(KUBEADM).startswith("http://127.0.0.1:9/k8s/release/")
    assert mirrors.image(UBUNTU).startswith("r.internal/hub/library/ubuntu@")
    assert "https://github.com/" in mirrors.urls


def test_no_user_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRRORS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_mirror_map().source == "built-in defaults"
    (tmp_path / ".config" / "assembler").mkdir(parents=True)
    (tmp_path / ".config" / "assembler" / "mirrors.yaml").write_text("urls: {https://github.com/: http://gh/}\n")
    assert load_mirror_map().url("https://github.com/x") == "http://gh/x"


def test_env_naming_a_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRRORS_ENV, str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="names no file") as err:
        load_mirror_map()
    assert "urls:" in err.value.resolution


@pytest.mark.parametrize("text", [
    "urls: {https://dl.k8s.io/: mirror.internal/k8s/}\n",   # not a URL
    "registries: {docker.io/: https://r.internal/}\n",       # a URL where a registry prefix belongs
    "mirrors: {}\n",                                          # unknown key
    "- a list\n",
])
def test_invalid_files_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="invalid mirror map"):
        load_mirror_map(path)
