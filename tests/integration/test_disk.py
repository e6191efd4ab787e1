"""rootfs tar -> raw disk with the real tools (sgdisk, mke2fs, mkfs.vfat, mtools, grub), read back once
through libguestfs. The rootfs is a small synthetic tar (no engine, no mirror): a stand-in kernel and
initrd, the host's grub modules under usr/lib/grub (as an image ships them), and the awkward entries
(hard link, device node, symlink, setuid file with a file capability, non-root owner)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assembler.disk import DiskResult, assemble_disk, load_layout
from assembler.disk.layout import MiB
from assembler.errors import DiskError
from assembler.fsutil import sha256_file
from assembler.guestfs import mount_root, open_disk
from assembler.run import run
from tests.helpers import scratch_dir

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000
KERNEL = "6.1.0-99-amd64"
SEED = "sha256:" + "ab" * 32
CAP_NET_RAW = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12
GRUB_HOST = Path("/usr/lib/grub")


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.mode = 0o755 if data is None else 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    if data is None and info.type == tarfile.REGTYPE:
        info.type = tarfile.DIRTYPE
    if data is not None:
        info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _add_grub(tf: tarfile.TarFile) -> None:
    for platform in ("i386-pc", "x86_64-efi"):
        base = GRUB_HOST / platform
        assert (base / "moddep.lst").exists(), f"host grub modules missing: {base} (make setup)"
        _add(tf, f"./usr/lib/grub/{platform}")
        for path in sorted(base.rglob("*")):
            rel = f"./usr/lib/grub/{platform}/{path.relative_to(base).as_posix()}"
            if path.is_dir():
                _add(tf, rel)
            elif path.is_file():
                _add(tf, rel, path.read_bytes())


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with scratch_dir(tmp_path_factory, "disk-rootfs") as root:
        yield _write_rootfs(root / "rootfs.tar")


def _write_rootfs(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("./", "./boot", "./dev", "./etc", "./home", "./usr", "./usr/bin", "./usr/lib",
                  "./usr/lib/grub"):
            _add(tf, d)
        _add(tf, f"./boot/vmlinuz-{KERNEL}", b"not a real kernel\n" * 100)
        _add(tf, f"./boot/initrd.img-{KERNEL}", b"not a real initrd\n")
        _add(tf, "./dev/null", None, type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        _add(tf, "./etc/fstab", b"# UNCONFIGURED FSTAB\n")
        _add(tf, "./etc/os-release", b"ID=test\n")
        _add(tf, "./home/user", None, uid=1000, gid=1000, mode=0o700)
        ping = tarfile.TarInfo("./usr/bin/ping")
        ping.mtime, ping.mode, ping.size = EPOCH, 0o4755, 4
        ping.pax_headers = {"SCHILY.xattr.security.capability": CAP_NET_RAW.decode("latin-1")}
        tf.addfile(ping, io.BytesIO(b"ping"))
        # a hard link entry carries the target's metadata (mke2fs applies it to the shared inode)
        _add(tf, "./usr/bin/ping4", None, type=tarfile.LNKTYPE, linkname="./usr/bin/ping", mode=0o4755)
        _add(tf, "./usr/bin/pong", None, type=tarfile.SYMTYPE, linkname="ping")
        _add_grub(tf)
    return path


def _build(rootfs: Path, dest: Path) -> DiskResult:
    return assemble_disk(rootfs, dest, load_layout(), seed=SEED, source_date_epoch=EPOCH,
                         cmdline="console=ttyS0,115200n8", headroom=64 * MiB, work_dir=dest.parent)


@pytest.fixture(scope="module")
def disks(rootfs_tar: Path) -> Iterator[tuple[Path, Path, DiskResult]]:
    first = rootfs_tar.with_name("first.raw")
    second = rootfs_tar.with_name("second.raw")
    result = _build(rootfs_tar, first)
    _build(rootfs_tar, second)
    yield first, second, result


def test_assembling_twice_gives_identical_disks(disks: tuple[Path, Path, DiskResult]) -> None:
    first, second, result = disks
    assert result.ext4_source == "tar", "install e2fsprogs >= 1.47.1 (bookworm-backports)"
    assert result.nondeterministic == ()
    assert sha256_file(first) == sha256_file(second)


def test_disk_is_sparse_aligned_and_leaves_no_temp_files(disks: tuple[Path, Path, DiskResult]) -> None:
    first, _, result = disks
    assert first.stat().st_size == result.size and result.size % MiB == 0
    assert first.stat().st_blocks * 512 < result.size  # holes stay holes
    leftovers = [p.name for p in first.parent.iterdir() if p.name.startswith((".", "disk-"))]
    assert leftovers == []


def test_root_filesystem_is_clean(disks: tuple[Path, Path, DiskResult]) -> None:
    first, _, result = disks
    root = result.partition("root")
    assert root is not None
    run(["e2fsck", "-fn", f"{first}?offset={root.start}"])


def test_mbr_has_grub_boot_code(disks: tuple[Path, Path, DiskResult]) -> None:
    first, _, result = disks
    with first.open("rb") as handle:
        mbr = handle.read(512)
        bios = result.partition("bios_boot")
        assert bios is not None
        handle.seek(bios.start)
        core = handle.read(512)
    assert mbr[510:] == b"\x55\xaa" and b"GRUB" in mbr
    assert mbr[0x1C2] == 0xEE  # protective MBR entry kept under the boot code
    assert core != b"\x00" * 512


def test_a_fixed_size_that_is_too_small_is_refused(rootfs_tar: Path, tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="does not fit") as err:
        assemble_disk(rootfs_tar, tmp_path / "small.raw", load_layout(), seed=SEED, source_date_epoch=EPOCH,
                      size=8 * MiB)
    assert "MiB" in err.value.resolution
    assert not (tmp_path / "small.raw").exists()


def test_disk_reads_back_through_libguestfs(disks: tuple[Path, Path, DiskResult]) -> None:
    first, _, result = disks
    with open_disk(first, fmt="raw") as g:
        _check_partitions(g, result)
        mount_root(g)
        _check_files(g, result)


def _check_partitions(g: Any, result: DiskResult) -> None:
    assert g.part_get_parttype("/dev/sda") == "gpt"
    parts = g.part_list("/dev/sda")
    expected = [(p.start, p.size) for p in result.partitions]
    assert [(p["part_start"], p["part_size"]) for p in parts] == expected
    types = [g.part_get_gpt_type("/dev/sda", p.number).upper() for p in result.partitions]
    assert types == ["21686148-6449-6E6F-744E-656564454649", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                     "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"]
    for p in result.partitions:
        assert g.part_get_gpt_guid("/dev/sda", p.number).lower() == p.partuuid
    assert g.vfs_type("/dev/sda2") == "vfat" and g.vfs_type("/dev/sda3") == "ext4"
    assert g.vfs_uuid("/dev/sda3") == result.root_uuid
    assert g.vfs_uuid("/dev/sda2") == result.esp_uuid
    assert g.vfs_label("/dev/sda3") == "root"


def _check_files(g: Any, result: DiskResult) -> None:
    fstab = g.cat("/etc/fstab")
    assert f"UUID={result.root_uuid}\t/\text4" in fstab
    assert f"UUID={result.esp_uuid}\t/boot/efi\tvfat" in fstab
    cfg = g.cat("/boot/grub/grub.cfg")
    assert f"linux /boot/vmlinuz-{KERNEL} root=UUID={result.root_uuid} ro console=ttyS0,115200n8" in cfg
    assert g.is_file("/boot/efi/EFI/BOOT/BOOTX64.EFI")
    assert g.pread("/boot/efi/EFI/BOOT/BOOTX64.EFI", 2, 0) == b"MZ"  # a PE image
    assert g.cat("/etc/os-release") == "ID=test\n"
    ping, ping4 = g.statns("/usr/bin/ping"), g.statns("/usr/bin/ping4")
    assert ping["st_ino"] == ping4["st_ino"] and ping["st_nlink"] == 2
    assert ping["st_mode"] & 0o7777 == 0o4755 and ping["st_mtime_sec"] == EPOCH
    caps = {x["attrname"]: x["attrval"] for x in g.getxattrs("/usr/bin/ping")}
    assert caps.get("security.capability") == CAP_NET_RAW
    assert g.readlink("/usr/bin/pong") == "ping"
    null = g.statns("/dev/null")
    assert null["st_mode"] & 0o170000 == 0o020000 and null["st_rdev"] == 0x103
    home = g.statns("/home/user")
    assert (home["st_uid"], home["st_gid"], home["st_mode"] & 0o777) == (1000, 1000, 0o700)
