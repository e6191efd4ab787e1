"""Debian 13 (trixie, the current stable): built from its lock, booted under BIOS and UEFI with its checks
(grub 2.12, systemd 257, a 6.12 kernel, cloud-init 25 through the same disk phase and hygiene as bookworm),
and rebuilt bit-identically from a cache holding only the package store, with the engine's cache off."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Built, rebuild_elsewhere
from tests.helpers import REPO, cli, scratch_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rebuilt13(debian13: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    with scratch_dir(tmp_path_factory, "elsewhere-13") as workdir:
        yield rebuild_elsewhere(debian13, "debian-13", workdir, "rootfs,disk", ("raw",))


def test_debian_13_boots_under_bios_and_uefi_and_passes_its_checks(debian13: Built) -> None:
    boot = debian13.manifest["boot"]
    runs = {r["firmware"]: r for r in boot["runs"]}
    assert set(runs) == {"bios", "uefi"}
    for run in runs.values():
        failed = [r for r in run["results"] if not r["passed"]]
        assert run["booted"] and not failed, failed or run["error"]
        print(f"debian-13 {run['firmware']}: boot {run['boot_seconds']} s, checks {run['checks_seconds']} s")
    assert all(check["passed"] for check in boot["hygiene"]), boot["hygiene"]
    names = {r["name"] for r in runs["uefi"]["results"]}
    assert any("cloud-init-network" in n for n in names) and any("IPv4 lease" in n for n in names)


def test_debian_13_is_trixie_with_its_own_boot_stack(debian13: Built) -> None:
    with tarfile.open(debian13.output("rootfs-tar")) as tar:
        release = tar.extractfile("etc/os-release").read().decode()  # type: ignore[union-attr]
        names = set(tar.getnames())
    assert 'VERSION_CODENAME=trixie' in release
    assert "usr/lib/grub/i386-pc/normal.mod" in names and "usr/lib/grub/x86_64-efi/normal.mod" in names
    packages = {p["name"]: p["version"] for p in json.loads(
        (debian13.out / "debian-13.lock.json").read_text())["packages"]}
    assert packages["grub-pc-bin"].startswith("2.12")
    assert packages["systemd"].split(".")[0] >= "257"


def test_two_cold_builds_of_debian_13_are_bit_identical(debian13: Built, rebuilt13: dict) -> None:  # type: ignore[type-arg]
    assert rebuilt13["lock"]["replayed"] is True and rebuilt13["lock"]["changes"] == []
    assert rebuilt13["base_image"] == debian13.manifest["base_image"]
    assert rebuilt13["rootfs"]["sha256"] == debian13.manifest["rootfs"]["sha256"]
    raw = [o["sha256"] for o in rebuilt13["outputs"] if o["format"] == "raw"]
    assert raw == [o["sha256"] for o in debian13.manifest["outputs"] if o["format"] == "raw"]


SECRET_FILE = b"e2e-file-secret-5c1d93aa70\n"
SECRET_ENV = "e2e-env-secret-0e27b4f8d6"


def test_build_secrets_reach_their_step_and_are_nowhere_in_the_disk(
        debian13: Built, tmp_path: Path, shared_cache: Path) -> None:
    image = tmp_path / "debian-13"
    shutil.copytree(REPO / "Containerfiles" / "debian-13", image)
    (tmp_path / "netrc").write_bytes(SECRET_FILE)
    with (image / "Containerfile").open("a") as containerfile:
        containerfile.write("RUN --mount=type=secret,id=netrc --mount=type=secret,id=api,env=API \\\n"
                            "    cat /run/secrets/netrc | sha256sum | cut -c1-64 > /etc/netrc-seen && \\\n"
                            '    printf %s "$API" | sha256sum | cut -c1-64 > /etc/api-seen\n')
    with (image / "image.yaml").open("a") as config:
        config.write("secrets:\n  netrc: {file: ../netrc}\n  api: {env: E2E_API}\n")
    proc = cli("build", str(image), "--phases", "rootfs,disk", "--no-boot-test", "--format", "raw",
               "--cache-dir", str(shared_cache), "--output", str(tmp_path / "out"), env={"E2E_API": SECRET_ENV})
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = {}
    with tarfile.open(tmp_path / "out" / "debian-13-rootfs.tar") as tar:
        for name in ("etc/netrc-seen", "etc/api-seen"):
            seen[name] = tar.extractfile(name).read().decode().strip()  # type: ignore[union-attr]
    assert seen == {"etc/netrc-seen": hashlib.sha256(SECRET_FILE).hexdigest(),
                    "etc/api-seen": hashlib.sha256(SECRET_ENV.encode()).hexdigest()}
    needles = [SECRET_FILE.strip(), SECRET_ENV.encode()]
    for path in sorted((tmp_path / "out").rglob("*")):
        if path.is_file():
            assert not _holds(path, needles), path  # the raw disk included: every byte
    assert not any(n.decode() in proc.stdout + proc.stderr for n in needles)


def _holds(path: Path, needles: list[bytes]) -> bool:
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(16 << 20):
            window = tail + chunk
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:]
    return False
