"""Secure Boot and the vTPM without a guest: the QEMU argv, the firmware choices, the guest probes' verdicts,
the measurements read over SSH (untrusted), and the signed chain taken from the rootfs for the ESP."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path

import pytest

from assembler.boot import qemu, tpm
from assembler.boot.checks import ProbeOutput
from assembler.disk import grub, index_tar
from assembler.errors import BootError, ConfigError, DiskError


def spec(tmp_path: Path, **changes: object) -> qemu.QemuSpec:
    base = qemu.QemuSpec(overlay=tmp_path / "o.qcow2", seed=tmp_path / "seed.iso", firmware="uefi-secureboot",
                         ssh_port=2222, console_log=tmp_path / "console.log", accelerator="tcg",
                         ovmf_vars=tmp_path / "VARS.fd")
    return qemu.QemuSpec(**{**base.__dict__, **changes})


def test_secure_boot_argv_uses_smm_and_microsofts_keys(tmp_path: Path) -> None:
    joined = " ".join(qemu.qemu_argv(spec(tmp_path)))
    assert "-machine q35,smm=on,graphics=off" in joined
    assert "-global driver=cfi.pflash01,property=secure,value=on" in joined
    assert "unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.ms.fd" in joined
    assert f"unit=1,file={tmp_path}/VARS.fd" in joined
    assert "tpmdev" not in joined
    plain = " ".join(qemu.qemu_argv(spec(tmp_path, firmware="uefi")))
    assert "smm=on" not in plain and "secure,value=on" not in plain and "OVMF_CODE_4M.fd" in plain


def test_a_tpm_is_a_crb_device_on_swtpms_socket(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(spec(tmp_path, tpm_socket=tmp_path / "tpm" / "swtpm.sock"))
    joined = " ".join(argv)
    assert f"-chardev socket,id=chrtpm,path={tmp_path}/tpm/swtpm.sock" in joined
    assert "-tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-crb,tpmdev=tpm0" in joined


def test_each_run_copies_the_variable_store_it_needs(tmp_path: Path) -> None:
    secure = qemu.copy_ovmf_vars(tmp_path, "uefi-secureboot")
    assert secure.read_bytes() == Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").read_bytes()
    (tmp_path / "plain").mkdir()
    plain = qemu.copy_ovmf_vars(tmp_path / "plain", "uefi")
    assert plain.read_bytes() == Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes()


@pytest.mark.parametrize(("choice", "expected"), [
    ("both", ["bios", "uefi"]), ("all", ["bios", "uefi", "uefi-secureboot"]),
    ("uefi-secureboot", ["uefi-secureboot"]), ("bios", ["bios"]),
])
def test_firmware_choices(choice: str, expected: list[str]) -> None:
    assert qemu.firmwares(choice) == expected


def test_an_unknown_firmware_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown firmware 'secureboot'") as caught:
        qemu.firmwares("secureboot")
    assert "uefi-secureboot" in caught.value.resolution


@pytest.mark.parametrize(("console", "refused"), [
    ("BdsDxe: starting Boot0001\nVerification failed: (0x1A) Security Violation\nstart_image() returned",
     "Verification failed: (0x1A) Security Violation"),
    ("BdsDxe: failed to load Boot0001 \"UEFI Misc Device\": Access Denied", "Access Denied"),
    ("Welcome to GRUB!\n[    0.000000] Linux version 6.1\n[    0.1] secureboot: Secure boot enabled", None),
])
def test_a_refusal_on_the_console_is_found(console: str, refused: str | None) -> None:
    line = tpm.refusal(console)
    assert (line is None) if refused is None else (line is not None and refused in line)


@pytest.mark.parametrize(("probe", "out", "passed", "message"), [
    (0, ProbeOutput(0, "   1\n", ""), True, "SecureBoot = 1"),
    (0, ProbeOutput(0, "   0\n", ""), False, "SecureBoot = 0 (not enforcing)"),
    (0, ProbeOutput(1, "", "tail: cannot open"), False, "unreadable"),
    (1, ProbeOutput(0, "none [integrity] confidentiality\n", ""), True, "lockdown"),
    (1, ProbeOutput(0, "[none] integrity confidentiality\n", ""), False, "lockdown"),
])
def test_secure_boot_probes_judge_the_guests_view(probe: int, out: ProbeOutput, passed: bool, message: str) -> None:
    result = tpm.secure_boot_probes()[probe].result(out)
    assert result.passed is passed and message in result.message


def test_tpm_probes() -> None:
    present, log = tpm.tpm_probes()
    assert present.result(ProbeOutput(0, "2\n", "")).passed
    assert not present.result(ProbeOutput(1, "", "")).passed
    assert log.result(ProbeOutput(0, "23112\n", "")).passed
    assert not log.result(ProbeOutput(0, "0\n", "")).passed


class FakeSsh:
    def __init__(self, out: ProbeOutput) -> None:
        self.out = out
        self.commands: list[str] = []

    def run_settled(self, remote: str, *, timeout: float) -> ProbeOutput:
        self.commands.append(remote)
        return self.out


def test_measurements_are_read_and_checked() -> None:
    log = b"\x00\x01event log"
    ssh = FakeSsh(ProbeOutput(0, f"{'AB' * 32}\n{'cd' * 32}\n{base64.b64encode(log).decode()}\n", ""))
    found = tpm.read_measurements(ssh, 10)  # type: ignore[arg-type]
    assert found.pcrs == {4: "ab" * 32, 7: "cd" * 32} and found.event_log == log
    assert "pcr-sha256/4" in ssh.commands[0] and "binary_bios_measurements" in ssh.commands[0]


@pytest.mark.parametrize(("stdout", "brief"), [
    ("only one line\n", "could not read the guest's PCRs"),
    (f"{'zz' * 32}\n{'cd' * 32}\nAAAA\n", "malformed PCR 4"),
    (f"{'ab' * 32}\n{'cd' * 32}\nnot base64!\n", "not valid base64"),
])
def test_bad_measurements_are_one_clear_error(stdout: str, brief: str) -> None:
    with pytest.raises(BootError, match=brief):
        tpm.read_measurements(FakeSsh(ProbeOutput(0, stdout, "")), 10)  # type: ignore[arg-type]


def rootfs(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            data = f"contents of {name}".encode()
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_the_signed_chain_goes_where_shim_and_debians_grub_look(tmp_path: Path) -> None:
    index = index_tar(rootfs(tmp_path / "rootfs.tar", [*grub.SIGNED_CHAIN.values(), "boot/vmlinuz-6.1.0-1-amd64"]))
    early = tmp_path / "early.cfg"
    early.write_text(grub.early_config("1234"))
    files = grub.signed_chain(index, early, tmp_path / "esp")
    assert sorted(files) == ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi", "EFI/BOOT/mmx64.efi",
                             "EFI/debian/grub.cfg"]
    assert files["EFI/BOOT/BOOTX64.EFI"].read_bytes() == b"contents of usr/lib/shim/shimx64.efi.signed"
    assert "search --no-floppy --fs-uuid --set=root 1234" in files["EFI/debian/grub.cfg"].read_text()
    shim, signed_grub, kernel = grub.boot_chain(index, "6.1.0-1-amd64")
    assert kernel == b"contents of boot/vmlinuz-6.1.0-1-amd64" and signed_grub.startswith(b"contents of usr/lib/grub")
    assert shim == files["EFI/BOOT/BOOTX64.EFI"].read_bytes()


def test_secure_boot_without_the_signed_packages_names_them(tmp_path: Path) -> None:
    index = index_tar(rootfs(tmp_path / "rootfs.tar", ["usr/lib/shim/shimx64.efi.signed"]))
    with pytest.raises(DiskError, match="lacks the signed boot chain") as caught:
        grub.signed_chain(index, tmp_path / "early.cfg", tmp_path / "esp")
    assert "grubx64.efi.signed" in caught.value.brief and "shimx64" not in caught.value.brief
    assert "grub-efi-amd64-signed" in caught.value.resolution and "secure_boot: false" in caught.value.resolution


def test_swtpm_runs_for_the_boot_and_not_after(tmp_path: Path) -> None:
    with tpm.running_swtpm(tmp_path) as socket:
        assert socket.is_socket()
        [proc] = [p for p in qemu._LIVE.values() if any(str(a).endswith("/swtpm") for a in p.args)]
        assert proc.poll() is None
    assert proc.poll() is not None and proc.pid not in qemu._LIVE
