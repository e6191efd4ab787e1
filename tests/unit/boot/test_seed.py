"""The NoCloud seed: fresh instance-id and key per run, root login by key only, a cidata volume."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from assembler.boot.seed import (
    GUEST_HOSTNAME,
    generate_key,
    meta_data,
    new_instance_id,
    user_data,
    write_seed,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHA1O4/O7agWTwzNqKVSqQA/OOAAxAjqJJKkk3kly/I4 assembler-boot"


def test_meta_data() -> None:
    data = yaml.safe_load(meta_data("assembler-0123"))
    assert data == {"instance-id": "assembler-0123", "local-hostname": GUEST_HOSTNAME}


def test_instance_ids_are_fresh() -> None:
    assert new_instance_id() != new_instance_id()


def test_user_data_gives_root_the_key_and_no_password() -> None:
    text = user_data(KEY)
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    assert config["disable_root"] is False
    assert "ssh_pwauth" not in config  # the image's sshd settings stay as built: no rewrite, no sshd restart
    assert config["ssh_authorized_keys"] == [KEY]
    [root] = config["users"]
    assert root == {"name": "root", "lock_passwd": True, "ssh_authorized_keys": [KEY]}
    assert not {"password", "chpasswd", "passwd"} & set(config) and "passwd" not in root
    # The key stays on one line (readable seed, easy to grep in a kept work directory).
    assert KEY in text


def test_seed_iso_holds_both_files_under_the_cidata_label(tmp_path: Path) -> None:
    key = generate_key(tmp_path)
    assert key.public.startswith("ssh-ed25519 ") and key.private.stat().st_mode & 0o077 == 0
    iso = write_seed(tmp_path, key.public, instance_id="assembler-test")
    listing = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info", "-ls", "/"],
                             capture_output=True, text=True, check=True)
    assert "Volume Id    : cidata" in listing.stdout
    assert "'meta-data'" in listing.stdout and "'user-data'" in listing.stdout
    extracted = tmp_path / "x"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(extracted)],
                   capture_output=True, check=True)
    assert yaml.safe_load((extracted / "meta-data").read_text())["instance-id"] == "assembler-test"
    assert key.public in (extracted / "user-data").read_text()


# The VM the seed is attached to: the argv is pure, so its promises are checked here.
def test_qemu_argv_bios_and_uefi(tmp_path: Path) -> None:
    from assembler.boot.qemu import QemuSpec, qemu_argv

    spec = QemuSpec(overlay=tmp_path / "a,b.qcow2", seed=tmp_path / "seed.iso", firmware="bios",
                    ssh_port=2222, console_log=tmp_path / "console.log", accelerator="tcg")
    argv = qemu_argv(spec)
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    for fragment in ("-machine pc,graphics=off", "-accel tcg", "-no-reboot", "-display none",
                     "hostfwd=tcp:127.0.0.1:2222-:22", "virtio-blk-pci,drive=disk0,bootindex=0",
                     f"file={tmp_path}/a,,b.qcow2", "format=qcow2", "readonly=on", "chardev:console"):
        assert fragment in joined, fragment
    assert "pflash" not in joined and "-cpu" not in argv
    uefi = qemu_argv(QemuSpec(**{**spec.__dict__, "firmware": "uefi", "accelerator": "kvm",
                                 "ovmf_vars": tmp_path / "VARS.fd"}))
    joined = " ".join(uefi)
    assert "-machine q35,graphics=off" in joined and "-cpu host" in joined
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd" in joined
    assert f"unit=1,file={tmp_path}/VARS.fd" in joined


@pytest.mark.parametrize(("bus", "fragments"), [
    ("virtio", ["virtio-blk-pci,drive=disk0,bootindex=0"]),
    ("scsi", ["virtio-scsi-pci,id=rootctl", "scsi-hd,drive=disk0,bus=rootctl.0,bootindex=0"]),
    ("pvscsi", ["pvscsi,id=rootctl", "scsi-hd,drive=disk0,bus=rootctl.0,bootindex=0"]),
    ("sata", ["ahci,id=rootctl", "ide-hd,drive=disk0,bus=rootctl.0,bootindex=0"]),
    ("nvme", ["nvme,drive=disk0,serial=assembler-root,bootindex=0"]),
])
def test_qemu_argv_puts_the_root_disk_on_the_chosen_bus(tmp_path: Path, bus: str, fragments: list[str]) -> None:
    from assembler.boot.qemu import QemuSpec, qemu_argv

    argv = qemu_argv(QemuSpec(overlay=tmp_path / "o.qcow2", seed=tmp_path / "seed.iso", firmware="bios",
                              ssh_port=2222, console_log=tmp_path / "c.log", accelerator="tcg",
                              disk_bus=bus))  # type: ignore[arg-type]
    devices = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]
    assert [d for d in devices if "disk0" in d or "rootctl" in d] == fragments
    # The seed stays on virtio-blk whatever the root disk's bus: it is read after the root is mounted.
    assert "virtio-blk-pci,drive=seed" in devices
    assert sum("bootindex" in d for d in devices) == 1


def test_unknown_disk_bus_names_the_choices() -> None:
    from assembler.boot.qemu import disk_bus
    from assembler.errors import ConfigError

    assert disk_bus("nvme") == "nvme"
    with pytest.raises(ConfigError) as info:
        disk_bus("ide")
    assert "pvscsi" in (info.value.resolution or "") and "NVMe" in (info.value.resolution or "")


def test_every_disk_bus_has_a_description_and_qemu_devices(tmp_path: Path) -> None:
    from typing import get_args

    from assembler.boot.qemu import DISK_BUSES, root_disk_devices
    from assembler.config import DiskBus

    assert set(DISK_BUSES) == set(get_args(DiskBus))
    assert all(root_disk_devices(bus) for bus in DISK_BUSES)
