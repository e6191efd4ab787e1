"""The Kubernetes node images are fully pinned and agree with the versions table and published checksums."""

from __future__ import annotations

import re
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from assembler.config import list_images, resolve_image
from assembler.packages.lockfile import LOCK_FILE, read_lock
from assembler.rootfs.context import base_reference, containerfile_args
from assembler.rootfs.downloads import load_downloads

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILES = REPO / "Containerfiles"
PUBLISHED = REPO.parent / "shared" / "data" / "k8s-checksums.yaml"
MINORS = ["1.30", "1.31", "1.32", "1.33", "1.34", "1.35"]
UBUNTU = [CONTAINERFILES / f"ubuntu-k8s-{m}" for m in MINORS]
TWINS = [CONTAINERFILES / f"debian-{r}-k8s-node" for r in ("12", "13")]
DIGEST_REF = re.compile(r"^[a-z0-9.:/_-]+@sha256:[0-9a-f]{64}$")
SNAPSHOT = re.compile(r"^https?://snapshot\.ubuntu\.com/ubuntu/\d{8}T\d{6}Z$")


def _generator() -> ModuleType:
    loader = SourceFileLoader("gen_k8s_images", str(REPO / "scripts" / "gen-k8s-images"))
    spec = spec_from_loader(loader.name, loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    return module


def _table() -> dict[str, Any]:
    table: dict[str, Any] = yaml.safe_load((CONTAINERFILES / "k8s-versions.yaml").read_text())
    return table


def _run_lines(containerfile: Path) -> str:
    """The Containerfile with continuation lines joined and comments dropped."""
    lines = [line for line in containerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines).replace("\\\n", " ")


def test_matrix_is_listed_and_templates_are_not() -> None:
    images = list_images()
    assert [f"ubuntu-k8s-{m}" for m in MINORS] == [i for i in images if i.startswith("ubuntu-k8s-")]
    assert "debian-12-k8s-node" in images
    assert not any(i.startswith("_") for i in images)


def test_generated_files_are_up_to_date() -> None:
    rendered = _generator().render_all(REPO)
    stale = [str(rel) for rel, text in rendered.items()
             if not (REPO / rel).is_file() or (REPO / rel).read_text() != text]
    assert not stale, f"run scripts/gen-k8s-images; stale: {stale}"
    for image in UBUNTU:
        for name in ("Containerfile", "downloads.yaml", "image.yaml", "checks.yaml", "packages.txt"):
            assert Path("Containerfiles") / image.name / name in rendered


@pytest.mark.parametrize("image", UBUNTU, ids=lambda p: p.name)
def test_base_is_pinned_by_digest(image: Path) -> None:
    ref = base_reference(image / "Containerfile")
    assert ref is not None and DIGEST_REF.match(ref), ref
    assert ref == f"{_table()['ubuntu']['image']}@{_table()['ubuntu']['digest']}"


@pytest.mark.parametrize("image", [*UBUNTU, *TWINS], ids=lambda p: p.name)
def test_nothing_floats(image: Path) -> None:
    for path in (image / "Containerfile", image / "downloads.yaml", image / "packages.txt"):
        if path.name == "packages.txt" and not path.exists():
            continue  # the Debian twin names its packages in the Containerfile (locked in image.lock.json)
        assert not re.search(r"\blatest\b", path.read_text(), re.I), f"`latest` in {path}"
    text = _run_lines(image / "Containerfile")
    # Binaries come only through downloads.yaml (verified on the host), never fetched in a RUN step.
    assert not re.search(r"\b(curl|wget)\s+(-\S+\s+)*['\"]?(https?://|\$)|\bADD\s+https?://", text), \
        f"in-build download in {image}"


@pytest.mark.parametrize("image", UBUNTU, ids=lambda p: p.name)
def test_every_download_has_a_checksum_and_is_required(image: Path) -> None:
    items = load_downloads(image / "downloads.yaml")  # validates sha256 as 64 hex digits
    assert {i.name for i in items} == {"kubeadm", "kubelet", "kubectl", "crictl", "cni_plugins", "containerd",
                                       "runc"}
    assert all(not i.optional for i in items)
    assert "COPY downloads/" in (image / "Containerfile").read_text()


def unpinned_apt_installs(text: str) -> list[str]:
    """apt installs that name packages inline instead of taking them from a list file through xargs."""
    found = []
    for match in re.finditer(r"(\S+\s+)?\bapt(?:-get)?\s+((?:-\S+\s+)*)install\b([^;&|]*)", text):
        prefix, rest = (match.group(1) or "").strip(), match.group(3)
        names = [w for w in rest.split() if not w.startswith("-")]
        if prefix != "xargs" or names:
            found.append(match.group(0).strip())
    return found


def test_unpinned_apt_install_is_detected() -> None:
    assert unpinned_apt_installs("RUN apt-get install -y curl jq") == ["RUN apt-get install -y curl jq"]
    assert unpinned_apt_installs("RUN apt install -y --no-install-recommends curl=8.5") != []
    assert unpinned_apt_installs("RUN grep -v '^#' /tmp/p.txt | xargs apt-get install -y -q; true") == []


@pytest.mark.parametrize("image", UBUNTU, ids=lambda p: p.name)
def test_apt_installs_only_from_a_dated_snapshot(image: Path) -> None:
    args = containerfile_args(image / "Containerfile")
    assert SNAPSHOT.match(args["APT_MIRROR"]), args["APT_MIRROR"]
    text = _run_lines(image / "Containerfile")
    assert "xargs apt-get install" in text
    # Packages only from the generated list, resolved against the snapshot (same date, same versions).
    assert unpinned_apt_installs(text) == []
    assert "sources.list.d/snapshot.sources" in text and "${APT_MIRROR}" in text
    packages = [p for p in (image / "packages.txt").read_text().splitlines() if p and not p.startswith("#")]
    assert packages == _table()["ubuntu"]["packages"]


@pytest.mark.parametrize("twin", TWINS, ids=lambda p: p.name)
def test_twin_installs_from_its_lock(twin: Path) -> None:
    text = _run_lines(twin / "Containerfile")
    assert "apt-get install" in text and "APT_MIRROR" not in text  # the locking proxy applies the mirror map
    lock = read_lock(twin / LOCK_FILE)
    versions = {p.name: p.version for p in lock.packages}
    entry = _table()["debian_twins"][twin.name.split("-")[1]]
    # The lock holds the containerd and runc the twin's checks expect (versions table).
    assert versions["containerd"].startswith(f"{entry['containerd']}~ds1")
    assert versions["runc"].startswith(f"{entry['runc']}+")
    assert {"linux-image-amd64", "cloud-init", "conntrack", "socat"} <= versions.keys()
    assert all(i.optional for i in load_downloads(twin / "downloads.yaml"))


def test_downloads_match_the_versions_table() -> None:
    table, gen = _table(), _generator()
    for minor, image in zip(MINORS, UBUNTU, strict=True):
        entry = table["minors"][minor]
        for item in load_downloads(image / "downloads.yaml"):
            assert item.sha256 == entry["sha256"][item.name]
            assert f"v{gen.component_version(entry, item.name)}" in item.url
    for release, twin_entry in table["debian_twins"].items():
        pins = table["minors"][twin_entry["minor"]]
        path = CONTAINERFILES / f"debian-{release}-k8s-node" / "downloads.yaml"
        for arch, sums in (("amd64", pins["sha256"]), ("arm64", pins["sha256_arm64"])):
            items = load_downloads(path, arch)
            assert {item.name for item in items} == set(gen.TWIN_COMPONENTS)  # each architecture its own set
            for item in items:
                assert item.arch == arch and item.sha256 == sums[item.name] and arch in item.url


def test_image_config_and_checks_name_the_versions() -> None:
    table = _table()
    for minor, image in zip(MINORS, UBUNTU, strict=True):
        entry, spec = table["minors"][minor], resolve_image(str(image))
        assert spec.config.properties["kubernetes_version"] == entry["kubernetes"]
        checks = (image / "checks.yaml").read_text()
        for key in ("kubernetes", "containerd", "crictl", "runc", "cni_plugins"):
            assert re.escape(entry[key]) in checks, key


def test_checksums_equal_the_published_ones() -> None:
    if not PUBLISHED.is_file():
        pytest.skip(f"{PUBLISHED} not present (it lives outside the repository)")
    published = yaml.safe_load(PUBLISHED.read_text())
    table, gen = _table(), _generator()
    compared = 0
    for minor, entry in table["minors"].items():
        for component, digest in entry["sha256"].items():
            version = gen.component_version(entry, component)
            assert published[component][table["arch"]][version] == digest, (minor, component, version)
            compared += 1
        for component, digest in entry.get("sha256_arm64", {}).items():
            version = gen.component_version(entry, component)
            assert published[component]["arm64"][version] == digest, (minor, "arm64", component, version)
            compared += 1
    assert compared == 7 * len(MINORS) + 5  # and the twins' five arm64 pins
