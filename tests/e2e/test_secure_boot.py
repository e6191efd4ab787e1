"""Secure Boot and measured boot on the shared debian-12 build: signatures on the ESP, enforcement, PCRs."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tarfile
from pathlib import Path

import pytest

from assembler import measured
from tests.e2e.conftest import Built
from tests.helpers import cli

pytestmark = pytest.mark.e2e

SHIM, GRUB = "EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi"


def esp_image(built: Built, raw: Path | None = None) -> str:
    """The mtools image spec of the ESP inside the raw disk (partition offset from the manifest)."""
    esp = next(p for p in built.manifest["disk"]["partitions"] if p["role"] == "esp")
    return f"{raw or built.output('raw')}@@{esp['start']}"


def esp_file(built: Built, path: str, dest: Path) -> Path:
    subprocess.run(["mcopy", "-n", "-i", esp_image(built), f"::/{path}", str(dest)], check=True,
                   env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    return dest


def pem(der: bytes, dest: Path) -> Path:
    dest.write_text(ssl.DER_cert_to_PEM_cert(der))
    return dest


def sbverify(cert: Path, binary: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbverify", "--cert", str(cert), str(binary)], capture_output=True, text=True)


def test_esp_chain_is_microsoft_and_debian_signed(debian12: Built, tmp_path: Path) -> None:
    """shim verifies against the Microsoft UEFI CA in the firmware's db; grub and the kernel against the Debian
    CA shim carries (the certificates taken from the firmware's variable store and from shim itself)."""
    assert debian12.manifest["disk"]["secure_boot"] is True
    shim = esp_file(debian12, SHIM, tmp_path / "shim.efi")
    grub = esp_file(debian12, GRUB, tmp_path / "grub.efi")
    kernel_version = debian12.manifest["disk"]["kernel_version"]
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(tar_member(debian12.output("rootfs-tar"), f"boot/vmlinuz-{kernel_version}"))
    store = {(v.guid, v.name): v for v in measured.parse_varstore(measured.SECURE_BOOT_VARS.read_bytes())}
    db = measured.signature_entries(store[(measured.SECURITY_DB_GUID, "db")].data)
    microsoft = [entry[16:] for _kind, entry in db if "UEFI CA 2011" in measured.common_name(entry[16:])]
    assert microsoft, [measured.common_name(e[16:]) for _k, e in db]
    ms_pem = pem(microsoft[0], tmp_path / "ms-uefi-ca.pem")
    vendor = measured.vendor_cert(shim.read_bytes())
    assert vendor is not None and "Debian Secure Boot CA" in measured.common_name(vendor)
    debian_pem = pem(vendor, tmp_path / "debian-ca.pem")

    assert sbverify(ms_pem, shim).returncode == 0, sbverify(ms_pem, shim).stderr
    for binary in (grub, kernel):
        result = sbverify(debian_pem, binary)
        assert result.returncode == 0 and "Signature verification OK" in result.stdout, result
        # ... and not by Microsoft directly: the chain really goes through shim.
        assert sbverify(ms_pem, binary).returncode != 0


def tar_member(tar: Path, name: str) -> bytes:
    with tarfile.open(tar) as archive:
        handle = archive.extractfile(name)
        assert handle is not None, name
        return handle.read()


def test_secure_boot_run_checked_the_guest_and_matched_the_pcr_prediction(debian12: Built) -> None:
    run = next(r for r in debian12.manifest["boot"]["runs"] if r["firmware"] == "uefi-secureboot")
    results = {r["name"]: r for r in run["results"]}
    for name in ("secure boot enabled", "kernel lockdown", "tpm present", "measured-boot event log", "measured boot"):
        assert results[name]["passed"], results[name]
    assert results["secure boot enabled"]["message"] == "SecureBoot = 1"
    assert "equal the prediction" in results["measured boot"]["message"]
    prediction = json.loads((debian12.out / "debian-12.pcrs.json").read_text())
    assert prediction["uncertain"] == []
    assert run["pcrs"] == {str(pcr): value for pcr, value in prediction["pcrs"].items()}
    # The event log the guest read is kept beside the console log, and it replays to the TPM's values.
    log = debian12.out / "eventlog-uefi-secureboot.bin"
    replayed = measured.replay(measured.parse_event_log(log.read_bytes()))
    assert {str(pcr): replayed[pcr] for pcr in (4, 7)} == run["pcrs"]


def test_a_tampered_grub_is_refused_under_secure_boot(debian12: Built, tmp_path: Path) -> None:
    """Enforcement: one flipped byte in the signed grub on the ESP, and shim refuses to start it."""
    disk = tmp_path / "tampered.raw"
    subprocess.run(["cp", "--sparse=always", str(debian12.output("raw")), str(disk)], check=True)
    grub = esp_file(debian12, GRUB, tmp_path / "grub.efi")
    data = bytearray(grub.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside .text: covered by the Authenticode hash
    grub.write_bytes(bytes(data))
    subprocess.run(["mcopy", "-o", "-i", esp_image(debian12, disk), str(grub), f"::/{GRUB}"], check=True,
                   env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    out = tmp_path / "boot"
    proc = cli("boot", str(disk), "--firmware", "uefi-secureboot", "--timeout", "300", "--output", str(out),
               "--json")
    assert proc.returncode != 0
    report = json.loads(proc.stdout)
    run = report["runs"][0]
    assert not run["booted"]
    assert "Secure Boot refused" in run["error"], run["error"]
    assert "Security Violation" in run["error"] or "Access Denied" in run["error"], run["error"]
    assert "Security Violation" in (out / "console-uefi-secureboot.log").read_text(errors="replace")
    shutil.rmtree(out)
