"""`assembler boot DISK`: boot a copy of a disk in QEMU and run its checks."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from assembler.errors import ConfigError


def boot(
    disk: Path = typer.Argument(..., help="disk to boot (raw, qcow2, vmdk, vhd); never modified"),
    firmware: str = typer.Option(
        "both", "--firmware",
        help="bios, uefi, uefi-secureboot (Microsoft keys, Secure Boot enforcing), both (bios + uefi) or all"),
    tpm: bool = typer.Option(False, "--tpm", help="give uefi-secureboot guests a TPM 2.0 (swtpm) and check the "
                             "firmware's event log and PCRs"),
    pcrs: Path | None = typer.Option(
        None, "--pcrs", help="PCR prediction to compare under uefi-secureboot --tpm (default: DISK's directory's "
        "<name>.pcrs.json, written by the build, when present)"),
    disk_bus: list[str] = typer.Option(
        ["virtio"], "--disk-bus",
        help="controller of the root disk: virtio, scsi (virtio-scsi), nvme, sata, pvscsi; repeat to boot on each"),
    checks: Path | None = typer.Option(None, "--checks", help="checks YAML (default: only the built-in hygiene)"),
    timeout: float = typer.Option(600, "--timeout", help="seconds to wait for the guest to come up"),
    keep: bool = typer.Option(False, "--keep", help="keep the overlay, seed and key; print their directory"),
    output: Path | None = typer.Option(None, "--output", "-o", help="where console logs and JUnit go"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
) -> None:
    """Boot DISK under BIOS, UEFI and/or UEFI with Secure Boot, run hygiene and guest checks; exit 0 only if
    all pass."""
    from assembler import boot as boot_engine
    from assembler import measured, progress
    from assembler.boot.qemu import disk_bus as parse_disk_bus
    from assembler.formats import detect_format

    if not disk.is_file():
        raise ConfigError(f"no such disk: {disk}", resolution="pass the path of a disk image")
    if not 0 < timeout < float("inf"):  # also false for nan
        raise ConfigError(f"invalid --timeout {timeout}", resolution="give a positive number of seconds, e.g. 600")
    if checks is not None and not checks.is_file():
        raise ConfigError(f"no such checks file: {checks}", resolution="pass an existing YAML file")
    buses = [parse_disk_bus(name) for name in dict.fromkeys(disk_bus)]
    firmwares = boot_engine.firmwares(firmware)
    if pcrs is not None and not pcrs.is_file():
        raise ConfigError(f"no such PCR prediction: {pcrs}", resolution="pass the IMAGE.pcrs.json of the build")
    sibling = disk.with_name(f"{disk.stem}.pcrs.json")
    prediction_file = pcrs or (sibling if tpm and sibling.is_file() else None)
    prediction = measured.load_prediction(prediction_file) if prediction_file else None
    out_dir = output or disk.parent
    with progress.activity(f"boot {disk.name}"):
        report = boot_engine.boot_test(disk, firmwares=firmwares, checks_file=checks, timeout=timeout, keep=keep,
                                       out_dir=out_dir, fmt=detect_format(disk), disk_buses=buses,
                                       tpm=tpm, prediction=prediction)
    boot_engine.print_summary(report)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    raise typer.Exit(boot_engine.exit_status(report))
