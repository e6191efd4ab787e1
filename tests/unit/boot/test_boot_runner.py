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


def _panicking_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, panics: int, accel: str = "tcg"
                   ) -> tuple[Any, list[str]]:
    """boot_disk with QEMU's helpers faked: the first `panics` boots end in a kernel panic on the console."""
    from assembler.boot import qemu, seed

    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 512)
    overlays: list[str] = []

    def make_overlay(disk: Path, fmt: str, dest: Path) -> Path:
        dest.write_bytes(b"overlay %d" % len(overlays))
        overlays.append(dest.read_text())
        return dest

    def boot_once(run: Any, spec: Any, ssh: Any) -> BootResult:
        if len(overlays) <= panics:
            run.console_log.write_text("[    3.6] Kernel panic - not syncing: Fatal exception in interrupt\n")
            raise runner._Panicked("[    3.6] Kernel panic - not syncing: Fatal exception in interrupt")
        run.console_log.write_text("login prompt\n")
        return BootResult(firmware=run.firmware, accelerator=run.accelerator, booted=True,
                          results=[CheckResult(name="ssh login", kind="boot", passed=True)])

    monkeypatch.setattr(qemu, "make_overlay", make_overlay)
    monkeypatch.setattr(qemu, "disk_format", lambda disk, fmt: "raw")
    monkeypatch.setattr(seed, "generate_key", lambda workdir: type("Key", (), {"public": "k", "private": workdir})())
    monkeypatch.setattr(seed, "write_seed", lambda workdir, public: workdir / "seed.iso")
    monkeypatch.setattr(runner, "accelerator", lambda: accel)
    monkeypatch.setattr(runner, "_boot_once", boot_once)
    console = tmp_path / "out" / "console-bios.log"
    return (lambda: runner.boot_disk(disk, fmt="raw", firmware="bios", checks=runner.CheckSuite(), timeout=60,
                                     keep=False, console_log=console)), overlays


def test_a_kernel_panic_under_tcg_is_booted_once_more_and_reported(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    boot, overlays = _panicking_run(tmp_path, monkeypatch, panics=1)
    result = boot()
    assert result.booted and overlays == ["overlay 0", "overlay 1"]  # a fresh overlay for the second boot
    assert result.results[0].name == "boot retried" and "Kernel panic" in result.results[0].message
    assert "Kernel panic" in (tmp_path / "out" / "console-bios.panic.log").read_text()


@pytest.mark.parametrize(("panics", "accel", "brief"), [
    (2, "tcg", "the guest kernel panicked (bios, root disk on virtio, tcg), twice"),
    (1, "kvm", "the guest kernel panicked (bios, root disk on virtio, kvm)"),
])
def test_a_second_panic_or_one_under_kvm_fails_the_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        panics: int, accel: str, brief: str) -> None:
    boot, _ = _panicking_run(tmp_path, monkeypatch, panics=panics, accel=accel)
    with pytest.raises(BootError) as caught:
        boot()
    assert caught.value.brief == brief and "Fatal exception" in caught.value.details


def test_a_panic_on_the_console_ends_the_wait_for_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from assembler.boot import guest

    console = tmp_path / "console.log"
    console.write_text("EFI stub: UEFI Secure Boot is disabled.\n"
                       "[    3.679527] Kernel panic - not syncing: Fatal exception in interrupt\n")
    vm = type("Vm", (), {"exited": lambda self: None, "stderr_tail": lambda self: ""})()
    monkeypatch.setattr(guest, "wait_for_ssh", lambda ssh, deadline, still_running: still_running())
    run = runner._Run(disk=tmp_path / "d.raw", fmt="raw", firmware="uefi", disk_bus="virtio",
                      checks=runner.CheckSuite(), timeout=60, console_log=console, accelerator="tcg",
                      workdir=tmp_path)
    with pytest.raises(runner._Panicked) as caught:
        runner._wait_for_ssh(run, vm, None, 0.0)  # type: ignore[arg-type]
    assert caught.value.line == "[    3.679527] Kernel panic - not syncing: Fatal exception in interrupt"
