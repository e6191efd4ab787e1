"""`assembler boot` on the built image: a check that does not hold fails the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Built
from tests.helpers import cli

pytestmark = pytest.mark.e2e


def test_failing_check_fails_the_command(debian12: Built, tmp_path: Path) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "service:\n"
        "  ssh: {active: true}\n"
        "  nginx: {active: true, enabled: true}   # not installed in debian-12\n"
        "package:\n"
        "  nginx: {installed: true}\n"
    )
    qcow2 = debian12.output("qcow2")
    before = qcow2.stat().st_mtime_ns
    proc = cli("boot", str(qcow2), "--firmware", "bios", "--checks", str(checks), "--output", str(tmp_path))
    assert proc.returncode != 0
    assert "nginx" in proc.stderr and "FAIL" in proc.stderr
    assert (tmp_path / "junit.xml").read_text().count("<failure") >= 2
    assert (tmp_path / "console-bios.log").stat().st_size > 0
    assert qcow2.stat().st_mtime_ns == before  # booted through an overlay, never the artefact


# Root-disk controllers of the clouds, each with the driver the guest must bind and the firmware it boots
# with there (NVMe instances boot UEFI on AWS Nitro and Azure; vSphere and GCE default to BIOS).
CONTROLLERS = {
    "nvme": ("uefi", "nvme", r"^/dev/nvme0n1p\d+$"),
    "pvscsi": ("bios", "vmw_pvscsi", r"^/dev/sda\d+$"),
    "sata": ("bios", "ahci", r"^/dev/sda\d+$"),
    "scsi": ("bios", "virtio_scsi", r"^/dev/sda\d+$"),
}
# Every driver bound on the way from the root filesystem's disk up to its PCI controller, one per line.
ROOT_DRIVERS = (
    'd=$(readlink -f "/sys/class/block/$(lsblk -no PKNAME "$(findmnt -no SOURCE /)")/device"); '
    'while [ "$d" != /sys/devices ] && [ "$d" != / ]; do '
    '[ -e "$d/driver" ] && basename "$(readlink -f "$d/driver")"; d=$(dirname "$d"); done'
)


@pytest.mark.parametrize("bus", sorted(CONTROLLERS))
def test_boots_from_each_cloud_disk_controller(debian12: Built, tmp_path: Path, bus: str) -> None:
    """The small initramfs (Containerfiles/debian-12/files/initramfs-modules) finds its root on every
    controller QEMU can emulate, and the root really is on that controller."""
    firmware, driver, device = CONTROLLERS[bus]
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "command:\n"
        f"  root filesystem device:\n    run: findmnt -no SOURCE /\n    stdout: ['{device}']\n"
        f"  root disk controller driver:\n    run: '{ROOT_DRIVERS}'\n    stdout: ['^{driver}$']\n"
        "mount:\n  /: {fstype: ext4, options: [rw]}\n"
    )
    proc = cli("boot", str(debian12.output("qcow2")), "--firmware", firmware, "--disk-bus", bus,
               "--checks", str(checks), "--output", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    [run] = report["runs"]
    assert (run["firmware"], run["disk_bus"], run["booted"]) == (firmware, bus, True)
    assert {r["name"] for r in run["results"] if r["passed"]} >= {
        "command root filesystem device", "command root disk controller driver", "mount /"}
    assert (tmp_path / f"console-{firmware}-{bus}.log").stat().st_size > 0
