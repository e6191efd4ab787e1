"""boot_test's orchestration (libguestfs and QEMU faked): hygiene overlaps the boots, every firmware is tried."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from assembler.boot import runner
from assembler.boot.checks import CheckResult
from assembler.boot.report import BootResult
from assembler.errors import BootError


def test_hygiene_runs_while_the_guests_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 512)
    booting = threading.Event()
    events: list[str] = []

    def hygiene(disk: Path, fmt: str | None, opts: Any) -> tuple[list[CheckResult], float]:
        # Only passes if a boot starts while the hygiene checks are still running.
        assert booting.wait(timeout=10), "no boot started while the hygiene checks ran"
        events.append("hygiene done")
        return [CheckResult(name="no ssh host keys", kind="hygiene", passed=True)], 1.0

    def boot(disk: Path, *, firmware: str, **_: Any) -> BootResult:
        booting.set()
        events.append(f"boot {firmware}")
        if firmware == "uefi":
            raise BootError("the guest did not bring up SSH", details="console tail")
        time.sleep(0.1)
        return BootResult(firmware=firmware, accelerator="tcg", booted=True)

    monkeypatch.setattr(runner, "check_artifact", hygiene)
    monkeypatch.setattr(runner, "boot_disk", boot)
    report = runner.boot_test(disk, ["bios", "uefi"], None, timeout=10, keep=False, out_dir=tmp_path / "out")
    assert events[0] == "boot bios" and "hygiene done" in events
    assert [r.firmware for r in report.runs] == ["bios", "uefi"]
    assert report.runs[0].booted and not report.runs[1].booted
    assert "did not bring up SSH" in (report.runs[1].error or "")
    assert report.hygiene[0].passed and report.hygiene_seconds == 1.0
    assert (tmp_path / "out" / "junit.xml").is_file()


def test_one_boot_per_firmware_and_disk_bus_each_with_its_console_log(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 512)
    seen: list[tuple[str, str, str]] = []

    def boot(disk: Path, *, firmware: str, disk_bus: str, console_log: Path, **_: Any) -> BootResult:
        seen.append((firmware, disk_bus, console_log.name))
        if disk_bus == "pvscsi":
            raise BootError("the guest did not bring up SSH", details="no root device")
        return BootResult(firmware=firmware, disk_bus=disk_bus, accelerator="tcg", booted=True)

    monkeypatch.setattr(runner, "check_artifact", lambda *a: ([], 0.0))
    monkeypatch.setattr(runner, "boot_disk", boot)
    report = runner.boot_test(disk, ["bios", "uefi"], None, timeout=10, keep=False, out_dir=tmp_path / "out",
                              disk_buses=["virtio", "pvscsi"])
    assert seen == [("bios", "virtio", "console-bios.log"), ("bios", "pvscsi", "console-bios-pvscsi.log"),
                    ("uefi", "virtio", "console-uefi.log"), ("uefi", "pvscsi", "console-uefi-pvscsi.log")]
    assert [r.label for r in report.runs] == ["bios", "bios/pvscsi", "uefi", "uefi/pvscsi"]
    assert not report.passed
    assert report.failure_summary().splitlines()[0].startswith("bios/pvscsi: the guest did not bring up SSH")
