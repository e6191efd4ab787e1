"""Bad input is one clear error, never a traceback or a hang (issue 13, item 6)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from assembler.boot.guest import parse_batch
from assembler.config import ImageConfig
from assembler.fsutil import sha256_tree
from tests.helpers import cli


def test_an_epoch_past_year_9999_is_refused_up_front() -> None:
    with pytest.raises(ValidationError):
        ImageConfig(source_date_epoch=100_000_000_000_000)
    with pytest.raises(ValidationError):
        ImageConfig(source_date_epoch=-1)


def test_a_file_name_that_is_not_utf8_is_hashed(tmp_path: Path) -> None:
    (tmp_path / os.fsdecode(b"caf\xe9")).write_text("x")
    first = sha256_tree(tmp_path)
    assert first == sha256_tree(tmp_path) and len(first) == 64


def _tar(members: list[tuple[str, bytes, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
            info.linkname = "/etc/shadow" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


@pytest.mark.parametrize("members", [
    [("0.rc", tarfile.REGTYPE, b"-5\n"), ("0.o", tarfile.REGTYPE, b"x")],     # not an exit status
    [("0.rc", tarfile.REGTYPE, b"zero")],
    [("../0.rc", tarfile.REGTYPE, b"0"), ("/1.rc", tarfile.REGTYPE, b"0")],   # outside the result files
    [("0.rc", tarfile.SYMTYPE, b""), ("1.rc", tarfile.DIRTYPE, b"")],         # not regular files
    [("7.rc", tarfile.REGTYPE, b"0")],                                        # a probe that was not asked for
])
def test_a_hostile_probe_batch_yields_no_result(members: list[tuple[str, bytes, bytes]]) -> None:
    assert parse_batch(_tar(members), 2) == {}
    assert parse_batch(b"@@probe 0 0 -5 0\nabc\n" * 3, 2) == {}


def test_cli_refuses_a_nan_timeout_and_a_negative_size(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 512)
    boot = cli("boot", str(disk), "--timeout", "nan")
    assert boot.returncode == 1 and "invalid --timeout" in boot.stdout + boot.stderr
    build = cli("build", "debian-12", "--size=-5G", "--dry-run")
    assert build.returncode == 1 and "invalid size" in build.stdout + build.stderr


def test_cli_names_the_phases_a_build_has() -> None:
    publish = cli("build", "debian-12", "--phases", "publish", "--dry-run")
    assert publish.returncode == 1 and "assembler publish IMAGE" in publish.stdout + publish.stderr
    unknown = cli("build", "debian-12", "--phases", "rootfs,pack", "--dry-run")
    assert unknown.returncode == 1
    assert "choose from: rootfs, disk, scan, convert, boot" in unknown.stdout + unknown.stderr
    scan = cli("build", "debian-12", "--phases", "scan", "--dry-run")
    assert scan.returncode == 1 and "debian-12 has no scan phase" in scan.stdout + scan.stderr


@pytest.mark.parametrize("cmdline", ["quiet\nmenuentry evil {", "a; reboot", "x=$root", 'console="a b"'])
def test_a_kernel_command_line_cannot_carry_grub_syntax(cmdline: str) -> None:
    from assembler.config import DiskConfig

    with pytest.raises(ValidationError):
        DiskConfig(cmdline=cmdline)
    assert DiskConfig(cmdline="console=ttyS0,115200n8 net.ifnames=0 quiet").cmdline.endswith("quiet")


def test_partition_names_and_mount_options_cannot_break_their_files() -> None:
    from assembler.disk.layout import Partition, RootFsOptions

    with pytest.raises(ValidationError):
        Partition(role="esp", size="64MiB", label='EFI", type=L\\n')
    with pytest.raises(ValidationError):
        RootFsOptions(mount_options="defaults\t0 0\n/dev/sdb /mnt ext4")
    assert RootFsOptions(mount_options="errors=remount-ro,noatime").mount_options.endswith("noatime")
