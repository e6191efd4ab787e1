"""arm64 on this amd64 machine: `assembler build debian-12 --arch arm64` (the base bootstrapped for arm64, RUN
steps under qemu-user through binfmt), a UEFI-only disk with an AArch64 root partition, booted under
qemu-system-aarch64 (virt, AAVMF, TCG) with debian-12's checks and `uname -m` = aarch64, read by libguestfs, and
built a second time cold elsewhere: bit for bit the same rootfs and disk."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from assembler.disk.gpt import disk_architecture
from tests.e2e.conftest import Built, build_formats, copy_store
from tests.helpers import REPO, cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def arm64(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("arm64")
    built = build_formats("debian-12", work / "out", shared_cache, ("raw",), "--arch", "arm64")
    print(f"arm64 debian-12 built and booted in {built.seconds:.1f} s: "
          f"{[(p['name'], p['seconds']) for p in built.manifest['phases']]}")
    return built


def test_it_boots_under_qemu_system_aarch64_with_debian12s_checks(arm64: Built) -> None:
    assert arm64.manifest["image"] == "debian-12-arm64"
    runs = arm64.manifest["boot"]["runs"]
    assert [run["firmware"] for run in runs] == ["uefi"]  # no BIOS on arm64; Secure Boot is amd64-only here
    assert all(run["booted"] and run["accelerator"] == "tcg" for run in runs)
    results = {r["name"]: r for run in runs for r in run["results"]}
    assert not [r for r in results.values() if not r["passed"]], results
    assert results["architecture"]["message"] == "uname -m: 'aarch64'"
    assert "command kernel matches the packaged kernel" in results  # debian-12's own checks ran
    assert all(check["passed"] for check in arm64.manifest["boot"]["hygiene"])


def test_the_disk_is_uefi_only_with_an_aarch64_root(arm64: Built) -> None:
    raw = arm64.output("raw")
    disk = arm64.manifest["disk"]
    assert disk["firmware"] == ["uefi"] and [p["role"] for p in disk["partitions"]] == ["esp", "root"]
    assert disk["architecture"] == "arm64"  # what publish tells each cloud
    assert disk_architecture(raw, "raw") == "arm64"  # what `assembler boot` reads to pick the emulator
    assert "console=ttyAMA0,115200n8" in disk["cmdline"] and re.search(r"-arm64$", disk["kernel_version"])
    esp = next(p for p in disk["partitions"] if p["role"] == "esp")
    listing = subprocess.run(["mdir", "-b", "-i", f"{raw}@@{esp['start']}", "::/EFI/BOOT"], check=True,
                             capture_output=True, text=True).stdout
    assert "BOOTAA64.EFI" in listing.upper() and "BOOTX64.EFI" not in listing.upper()


def test_libguestfs_inspects_an_aarch64_debian(arm64: Built) -> None:
    env = {**os.environ, "LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    proc = subprocess.run(["virt-inspector", "--format=raw", "-a", str(arm64.output("raw"))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<arch>aarch64</arch>" in proc.stdout and "<distro>debian</distro>" in proc.stdout


def test_a_second_cold_build_elsewhere_is_bit_identical(arm64: Built, tmp_path: Path) -> None:
    """Another cache holding only the package store (the base bootstrapped again for arm64), the effective
    lock replayed (--locked), no engine cache: the same rootfs and the same raw disk."""
    context = tmp_path / "debian-12"
    shutil.copytree(REPO / "Containerfiles" / "debian-12", context)
    shutil.copyfile(arm64.output("lock"), context / "image.lock.arm64.json")
    copy_store(arm64.cache, tmp_path / "fresh-cache")
    proc = cli("build", str(context), "--arch", "arm64", "--phases", "disk", "--format", "raw", "--no-cache",
               "--no-boot-test", "--locked", "--cache-dir", str(tmp_path / "fresh-cache"), "--output",
               str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert again["lock"]["replayed"] and again["base_image"] == arm64.manifest["base_image"]
    assert again["rootfs"]["sha256"] == arm64.manifest["rootfs"]["sha256"]
    assert again["disk"]["sha256"] == arm64.manifest["disk"]["sha256"]
    print(f"second cold arm64 build (base bootstrapped again): "
          f"{[(p['name'], p['seconds']) for p in again['phases']]}")
