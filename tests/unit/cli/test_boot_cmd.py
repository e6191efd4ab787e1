"""`assembler boot`: every option is checked before a guest starts, and what the command hands the boot engine
and makes of its report (the engine is stood in for: no QEMU runs here; tests/e2e boots for real)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import assembler.boot as boot_engine
from assembler import measured
from assembler.boot import BootReport, BootResult, CheckResult
from tests.unit.cli.invoke import error_of, run


@pytest.fixture()
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "demo.raw"
    path.write_bytes(b"\0" * 65536)
    return path


@pytest.fixture()
def engine(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The boot engine's calls; each boots BIOS fine (no checks)."""
    calls: list[dict[str, Any]] = []

    def boot_test(disk: Path, **options: Any) -> BootReport:
        calls.append({"disk": disk, **options})
        return report

    report = BootReport(disk="demo.raw", format="raw", runs=[BootResult(firmware="bios", accelerator="tcg",
                                                                         booted=True)])
    monkeypatch.setattr(boot_engine, "boot_test", boot_test)
    return calls


@pytest.mark.parametrize(("args", "brief", "resolution"), [
    (["--timeout", "0"], "invalid --timeout 0.0", "positive number of seconds"),
    (["--timeout", "-5"], "invalid --timeout -5.0", "positive number of seconds"),
    (["--timeout", "inf"], "invalid --timeout inf", "positive number of seconds"),
    (["--firmware", "coreboot"], "unknown firmware 'coreboot'", "use bios, uefi, uefi-secureboot, both, all"),
    (["--pcrs", "/nonexistent/x.pcrs.json"], "no such PCR prediction: /nonexistent/x.pcrs.json", "IMAGE.pcrs.json"),
    (["--disk-bus", "virtio", "--disk-bus", "ide"], "unknown disk bus 'ide'", "sata (SATA/AHCI"),
])
def test_a_bad_option_is_refused_before_any_boot(disk: Path, engine: list[dict[str, Any]], args: list[str],
                                                 brief: str, resolution: str) -> None:
    error = error_of(run("boot", str(disk), *args))
    assert error.brief == brief
    assert resolution in error.resolution
    assert engine == []


def test_a_missing_disk_or_checks_file(tmp_path: Path, disk: Path, engine: list[dict[str, Any]]) -> None:
    missing = error_of(run("boot", str(tmp_path / "gone.qcow2")))
    assert missing.brief == f"no such disk: {tmp_path / 'gone.qcow2'}"
    checks = error_of(run("boot", str(disk), "--checks", str(tmp_path / "checks.yaml")))
    assert checks.brief == f"no such checks file: {tmp_path / 'checks.yaml'}"
    assert engine == []


def test_both_firmwares_each_bus_once_and_the_report_as_json(disk: Path, tmp_path: Path,
                                                             engine: list[dict[str, Any]]) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text("checks: []\n")
    result = run("boot", str(disk), "--disk-bus", "nvme", "--disk-bus", "sata", "--disk-bus", "nvme",
                 "--checks", str(checks), "--timeout", "90", "--json")
    assert result.exit_code == 0, result.output
    [call] = engine
    assert call == {"disk": disk, "firmwares": ["bios", "uefi"], "checks_file": checks, "timeout": 90.0,
                    "keep": False, "out_dir": disk.parent, "fmt": "raw", "disk_buses": ["nvme", "sata"],
                    "tpm": False, "prediction": None}
    report = json.loads(result.stdout)
    assert report["disk"] == "demo.raw" and [r["firmware"] for r in report["runs"]] == ["bios"]


def test_one_firmware_an_output_directory_and_keep(disk: Path, tmp_path: Path,
                                                   engine: list[dict[str, Any]]) -> None:
    result = run("boot", str(disk), "--firmware", "uefi", "--keep", "-o", str(tmp_path / "logs"))
    assert result.exit_code == 0, result.output
    assert (engine[0]["firmwares"], engine[0]["keep"], engine[0]["out_dir"], engine[0]["disk_buses"]) == \
        (["uefi"], True, tmp_path / "logs", ["virtio"])
    assert result.stdout == ""


def test_secure_boot_with_a_tpm_takes_the_disks_pcr_prediction(disk: Path, engine: list[dict[str, Any]]) -> None:
    prediction = measured.Prediction(pcrs={4: "ab" * 32, 7: "cd" * 32}, events=[], inputs={}, uncertain=[],
                                     assumptions=[])
    (disk.parent / "demo.pcrs.json").write_text(prediction.model_dump_json())
    result = run("boot", str(disk), "--firmware", "all", "--tpm")
    assert result.exit_code == 0, result.output
    assert engine[0]["firmwares"] == ["bios", "uefi", "uefi-secureboot"]
    assert engine[0]["tpm"] is True and engine[0]["prediction"] == prediction
    # Without --tpm there is nothing to compare it with; a file that is not a prediction is one clear error.
    run("boot", str(disk), "--firmware", "uefi-secureboot")
    assert engine[1]["prediction"] is None and engine[1]["firmwares"] == ["uefi-secureboot"]
    (disk.parent / "demo.pcrs.json").write_text('{"pcrs": "nope"}')
    error = error_of(run("boot", str(disk), "--tpm"))
    assert error.brief.endswith("demo.pcrs.json is not a PCR prediction") and "rebuild" in error.resolution
    assert len(engine) == 2


def test_a_failed_check_is_exit_1(disk: Path, engine: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    failed = BootReport(disk="demo.raw", format="raw", runs=[BootResult(
        firmware="bios", accelerator="tcg", booted=True,
        results=[CheckResult(name="sshd active", kind="service", passed=False, message="inactive")])])
    monkeypatch.setattr(boot_engine, "boot_test", lambda disk, **options: failed)
    result = run("boot", str(disk), "--firmware", "bios")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # an outcome, not an error
    assert "sshd active" in result.stderr
