"""debian-12 end to end: build, every format, read back, boot in BIOS, UEFI and UEFI Secure Boot, reuse."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from assembler import bom, cyclonedx
from assembler.fsutil import sha256_file
from assembler.guestfs import mount_root, open_disk
from tests.e2e.conftest import ALL_FORMATS, Built, build
from tests.helpers import REPO
from tests.unit.bomdata import same_listing

pytestmark = pytest.mark.e2e


def qemu_info(path: Path, fmt: str) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(path)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_manifest_records_image_layers_rootfs_tools_phases(debian12: Built) -> None:
    m = debian12.manifest
    assert m["image"] == "debian-12"
    assert m["oci"]["digest"].startswith("sha256:")
    assert m["oci"]["layers"] and all(layer["digest"].startswith("sha256:") for layer in m["oci"]["layers"])
    assert any("apt-get" in layer["step"] for layer in m["oci"]["layers"])
    assert len(m["rootfs"]["sha256"]) == 64
    assert m["tools"]["qemu-img"] != "absent"
    assert {p["name"] for p in m["phases"]} >= {"rootfs", "disk", "boot"}


def test_every_output_exists_with_its_recorded_sha256(debian12: Built) -> None:
    formats = {o["format"] for o in debian12.manifest["outputs"]}
    assert set(ALL_FORMATS) - {"kubevirt"} <= formats
    for item in debian12.manifest["outputs"]:
        path = debian12.out / item["path"]
        assert sha256_file(path) == item["sha256"], item


def test_spdx_and_cyclonedx_validate_and_list_the_same_packages(debian12: Built) -> None:
    spdx, cdx = bom.load_spdx(debian12.output("spdx")), json.loads(debian12.output("cyclonedx").read_bytes())
    assert bom.validate_spdx(spdx) == [] and cyclonedx.validate_cyclonedx(cdx) == []
    same_listing(spdx, cdx)
    debs = [c for c in cdx["components"] if c.get("purl", "").startswith("pkg:deb/debian/")]
    assert len(debs) == len(bom.deb_packages(spdx)) > 100
    assert cdx["metadata"]["component"]["version"] == f"sha256:{debian12.manifest['rootfs']['sha256']}"


def test_rootfs_output_matches_manifest(debian12: Built) -> None:
    tar = debian12.output("rootfs-tar")
    with tarfile.open(tar) as archive:
        names = archive.getnames()
        # The kernel's depmod ran beside dpkg (files/depmod.sh) and had finished before the layer was committed.
        deps = [m for m in archive.getmembers() if re.fullmatch(r"(usr/)?lib/modules/[^/]+/modules\.dep", m.name)]
    assert names == sorted(names)
    assert "etc/assembler-release" in names
    assert deps and all(m.size > 100_000 for m in deps), [(m.name, m.size) for m in deps]
    # Build-time only settings do not reach the image (dpkg's force-unsafe-io, the staged build files).
    assert "etc/dpkg/dpkg.cfg.d/zz-assembler-build" not in names
    assert not [n for n in names if n == "tmp/build" or n.startswith("tmp/build/")]
    assert "etc/initramfs-tools/conf.d/assembler.conf" in names


def test_initramfs_carries_every_listed_cloud_disk_driver(debian12: Built, tmp_path: Path) -> None:
    """MODULES=list (files/initramfs-modules): the drivers QEMU cannot boot from (Hyper-V, Xen) are checked
    by name here; the others are also booted (test_boot_cli)."""
    listed = (REPO / "Containerfiles/debian-12/files/initramfs-modules").read_text().split("\n")
    wanted = {line.strip().replace("-", "_") for line in listed if line.strip() and not line.startswith("#")}
    with tarfile.open(debian12.output("rootfs-tar")) as archive:
        [member] = [m for m in archive.getmembers() if re.fullmatch(r"boot/initrd\.img-.+", m.name)]
        handle = archive.extractfile(member)
        assert handle is not None
        (tmp_path / "initrd").write_bytes(handle.read())
    listing = subprocess.run(["lsinitramfs", str(tmp_path / "initrd")], capture_output=True, text=True,
                             check=True).stdout.split()
    present = {Path(p).name.removesuffix(".ko").replace("-", "_") for p in listing if p.endswith(".ko")}
    assert wanted <= present, sorted(wanted - present)
    assert {"hv_storvsc", "xen_blkfront", "nvme", "vmw_pvscsi"} <= present
    assert len(present) < 100, "the initramfs holds every storage driver (MODULES=most?)"


def test_disk_formats_are_what_they_claim(debian12: Built) -> None:
    raw_size = debian12.output("raw").stat().st_size
    assert raw_size % (1 << 20) == 0
    assert qemu_info(debian12.output("qcow2"), "qcow2")["virtual-size"] == raw_size
    vmdk = qemu_info(debian12.output("vmdk"), "vmdk")
    assert vmdk["format-specific"]["data"]["create-type"] == "streamOptimized"
    vhd = qemu_info(debian12.output("vhd"), "vpc")
    assert vhd["virtual-size"] % (1 << 20) == 0
    assert debian12.output("vhd").stat().st_size == vhd["virtual-size"] + 512
    subprocess.run(["qemu-img", "check", "-f", "qcow2", str(debian12.output("qcow2"))], check=True)


def test_qcow2_size_is_close_to_used_data(debian12: Built) -> None:
    qcow2 = debian12.output("qcow2").stat().st_size
    used = debian12.output("raw").stat().st_blocks * 512
    ratio = qcow2 / used
    print(f"qcow2 {qcow2 / 2**20:.0f} MiB / allocated raw {used / 2**20:.0f} MiB = {ratio:.3f}")
    assert ratio < 1.1


def test_gce_and_ova_packagings(debian12: Built) -> None:
    with tarfile.open(debian12.output("gce")) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["disk.raw"]
    assert members[0].size % (1 << 30) == 0
    with tarfile.open(debian12.output("ova")) as archive:
        names = archive.getnames()
    assert names[0].endswith(".ovf") and any(n.endswith(".vmdk") for n in names)


def test_disk_holds_the_container_files(debian12: Built) -> None:
    with open_disk(debian12.output("raw"), fmt="raw") as g:
        mount_root(g)
        release = g.cat("/etc/assembler-release")
        fstab = g.cat("/etc/fstab")
        kernels = [f for f in g.ls("/boot") if f.startswith("vmlinuz-")]
        efi = g.is_file("/boot/efi/EFI/BOOT/BOOTX64.EFI")
    assert release.strip()
    assert "UUID=" in fstab
    assert kernels
    assert efi


def test_boot_passed_in_bios_uefi_and_uefi_secureboot(debian12: Built) -> None:
    boot = debian12.manifest["boot"]
    runs = {r["firmware"]: r for r in boot["runs"]}
    assert set(runs) == {"bios", "uefi", "uefi-secureboot"}  # image.yaml: firmware all, tpm true
    for run in runs.values():
        failed = [r for r in run["results"] if not r["passed"]]
        assert run["booted"] and not failed, failed or run["error"]
        print(f"{run['firmware']}: boot {run['boot_seconds']} s {run['stages']}, checks {run['checks_seconds']} s "
              f"({run['accelerator']})")
        # Where the boot time went, read from the console: firmware, kernel, userspace up to SSH.
        assert list(run["stages"]) == ["firmware", "kernel", "userspace"], run["stages"]
        assert all(seconds >= 0 for seconds in run["stages"].values())
        assert sum(run["stages"].values()) == pytest.approx(run["boot_seconds"], abs=0.5)
    assert all(check["passed"] for check in boot["hygiene"]), boot["hygiene"]
    assert (debian12.out / "console-bios.log").stat().st_size > 0
    assert list(debian12.out.glob("*.xml"))
    # The build's boot report names the image and files that exist in out/, not the store's temporary paths.
    assert "boot test of debian-12 (raw)" in debian12.stderr
    shown = re.findall(r"(?:console log|JUnit report:) (\S+)", debian12.stderr)
    assert len(shown) == 4 and all(Path(p).is_file() and Path(p).parent == debian12.out for p in shown), shown


def test_second_build_reuses_every_phase(debian12: Built) -> None:
    """The no-change rebuild a user runs: same cache, same out/ (so outputs already in place stay untouched)."""
    rewritten = {"manifest.json", ".assembler-outputs.json"}  # records of this build, rewritten by each
    before = {p.name: p.stat().st_mtime_ns for p in debian12.out.iterdir() if p.name not in rewritten}
    again = build("debian-12", debian12.out, debian12.cache)
    assert all(p["cached"] for p in again.manifest["phases"]), again.manifest["phases"]
    assert "reused" in again.stderr
    assert again.manifest["rootfs"]["sha256"] == debian12.manifest["rootfs"]["sha256"]
    assert again.manifest["outputs"] == debian12.manifest["outputs"]
    after = {p.name: p.stat().st_mtime_ns for p in debian12.out.iterdir() if p.name not in rewritten}
    assert after == before, "a no-change rebuild copied outputs again"
    print(f"no-change rebuild: {again.seconds:.1f} s (cold: {debian12.seconds:.1f} s)")


def test_the_build_time_package_source_leaves_no_trace(debian12: Built) -> None:
    """apt fetched through the locking proxy (http_proxy) on a base with a build-only apt.conf: neither the
    image's config and history, nor the rootfs, nor the lock record anything but the upstream archive."""
    from assembler import engine
    from assembler.packages import BUILD_ONLY_APT_CONF

    client = engine.connect(start=False)
    ref = debian12.manifest["oci"]["digest"]
    text = json.dumps(client.api.inspect_image(ref)) + json.dumps(client.api.history(ref))
    assert "http_proxy" not in text.lower() and "127.0.0.1" not in text
    with tarfile.open(debian12.output("rootfs-tar")) as tar:
        names = set(tar.getnames())
        sources = tar.extractfile("etc/apt/sources.list").read().decode()  # type: ignore[union-attr]
    assert BUILD_ONLY_APT_CONF not in names and "etc/apt/apt.conf.d/70debconf" in names
    assert "127.0.0.1" not in sources and "deb http://deb.debian.org/debian bookworm main" in sources
    lock = json.loads((debian12.out / "debian-12.lock.json").read_text())
    assert all(p["url"].startswith("http://deb.debian.org/") for p in lock["packages"])
    assert debian12.manifest["lock"]["packages"] == len(lock["packages"]) > 200
