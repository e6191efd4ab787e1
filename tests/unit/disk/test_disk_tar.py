"""Reading the rootfs tar and writing the mke2fs source tar (overlay added, replaced members dropped)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from assembler import tarindex
from assembler.disk import ext4
from assembler.disk.layout import RootFsOptions
from assembler.errors import DiskError
from assembler.run import run

EPOCH = 1_700_000_000


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **kw: object) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1
    for key, value in kw.items():
        setattr(info, key, value)
    if data is None and info.type == tarfile.REGTYPE:
        info.type = tarfile.DIRTYPE
    if data is not None:
        info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _rootfs(path: Path, *, kernels: tuple[str, ...] = ("6.1.0-9-amd64", "6.1.0-10-amd64")) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "./")
        _add(tf, "./boot")
        for version in kernels:
            _add(tf, f"./boot/vmlinuz-{version}", b"k" * 5000)
            _add(tf, f"./boot/initrd.img-{version}", b"i" * 10)
        _add(tf, "./boot/vmlinuz-6.2.0-1-amd64", b"no initrd for this one")
        _add(tf, "./etc")
        _add(tf, "./etc/fstab", b"# UNCONFIGURED FSTAB\n")
        _add(tf, "./etc/hostname", b"host\n")
        _add(tf, "./usr")
        _add(tf, "./usr/bin")
        ping = tarfile.TarInfo("./usr/bin/ping")
        ping.size = 4
        ping.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                            "SCHILY.xattr.user.note": "x"}
        tf.addfile(ping, io.BytesIO(b"ping"))
        _add(tf, "./usr/bin/ping6", None, type=tarfile.LNKTYPE, linkname="./usr/bin/ping")
        _add(tf, "./var")
        journal = tarfile.TarInfo("./var/journal")
        journal.type = tarfile.DIRTYPE
        journal.pax_headers = {"SCHILY.xattr.system.posix_acl_default": "acl"}
        tf.addfile(journal)
    return path


def test_index_reads_names_kinds_and_content(tmp_path: Path) -> None:
    index = tarindex.index_tar(_rootfs(tmp_path / "r.tar"))
    assert index.dot_slash
    assert "etc/fstab" in index.names and "" in index.names
    kinds = {m.name: m.kind for m in index.members}
    assert kinds["usr/bin/ping6"] == "hardlink" and kinds["etc"] == "dir"
    link = next(m for m in index.members if m.name == "usr/bin/ping6")
    assert link.linkname == "usr/bin/ping"
    # 5000-byte kernels take two 4 KiB blocks each; directories one block
    assert index.content_bytes() % ext4.BLOCK == 0
    assert index.content_bytes() >= 2 * 2 * ext4.BLOCK
    assert index.inode_count() == len(index.members) - 1


def test_newest_kernel_with_an_initrd_wins(tmp_path: Path) -> None:
    index = tarindex.index_tar(_rootfs(tmp_path / "r.tar"))
    assert ext4.find_kernel(index) == "6.1.0-10-amd64"  # numeric, not string order; 6.2 has no initrd


def test_no_kernel_is_a_disk_error(tmp_path: Path) -> None:
    index = tarindex.index_tar(_rootfs(tmp_path / "r.tar", kernels=()))
    with pytest.raises(DiskError, match="no kernel") as err:
        ext4.find_kernel(index)
    assert "linux-image" in err.value.resolution


def test_dropped_xattrs_are_listed(tmp_path: Path) -> None:
    index = tarindex.index_tar(_rootfs(tmp_path / "r.tar"))
    assert ext4.dropped_xattrs(index) == [
        "user.note on /usr/bin/ping", "system.posix_acl_default on /var/journal",
    ]


def test_source_tar_replaces_and_adds(tmp_path: Path) -> None:
    src = _rootfs(tmp_path / "r.tar")
    index = tarindex.index_tar(src)
    overlay = [ext4.OverlayEntry("boot/efi"), ext4.OverlayEntry("etc/fstab", b"UUID=x / ext4 defaults 0 1\n")]
    out = tmp_path / "out.tar"
    _write(index, overlay, out)
    with tarfile.open(out) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert names.count("./etc/fstab") == 1
        fstab = tf.getmember("./etc/fstab")
        assert tf.extractfile(fstab).read().startswith(b"UUID=x")  # type: ignore[union-attr]
        assert (fstab.mtime, fstab.uid, fstab.gid, fstab.mode) == (EPOCH, 0, 0, 0o644)
        assert tf.getmember("./boot/efi").isdir()
        ping = tf.getmember("./usr/bin/ping")
        assert "SCHILY.xattr.security.capability" in ping.pax_headers  # copied byte for byte
        assert tf.extractfile("./etc/hostname").read() == b"host\n"  # type: ignore[union-attr]
    # untouched members are identical bytes: the output starts with the input's first members
    assert out.read_bytes()[:1024] == src.read_bytes()[:1024]


def test_source_tar_is_deterministic(tmp_path: Path) -> None:
    index = tarindex.index_tar(_rootfs(tmp_path / "r.tar"))
    overlay = [ext4.OverlayEntry("etc/fstab", b"a\n")]
    _write(index, overlay, tmp_path / "a.tar")
    _write(index, overlay, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    # Piped (what mke2fs -d - reads): the same bytes, spliced into the pipe instead of copied into a file.
    piped = run(["cat"], feed=lambda out: ext4.write_source_tar(index, overlay, out, EPOCH)).stdout
    assert piped == (tmp_path / "a.tar").read_bytes()


def _write(index: tarindex.TarIndex, overlay: list[ext4.OverlayEntry], path: Path) -> None:
    with path.open("wb") as out:
        ext4.write_source_tar(index, overlay, out, EPOCH)


def test_replacing_a_hardlink_target_is_refused(tmp_path: Path) -> None:
    index = tarindex.index_tar(_rootfs(tmp_path / "r.tar"))
    with pytest.raises(DiskError, match="hard link"):
        _write(index, [ext4.OverlayEntry("usr/bin/ping", b"")], tmp_path / "o.tar")


def test_not_a_tar_is_a_disk_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.tar"
    bad.write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    with pytest.raises(DiskError, match="cannot read the rootfs tar"):
        tarindex.index_tar(bad)


def test_mke2fs_config_pins_features(tmp_path: Path) -> None:
    options = RootFsOptions(features=("has_journal", "extent"))
    text = ext4.mke2fs_config(options, tmp_path / "m.conf").read_text()
    assert "features = has_journal,extent" in text
    assert "ext_attr" in text  # base features: xattrs (security.capability) need it
    for usage in ("small", "default", "big", "huge"):
        assert f"\t{usage} = {{" in text


@pytest.mark.parametrize(
    ("stderr", "full"),
    [("Could not allocate block in ext2 filesystem while writing file", True),
     ("No space left on device", True), ("Bad magic number in super-block", False)],
)
def test_full_filesystem_detection(stderr: str, full: bool) -> None:
    assert ext4._is_full(stderr) is full


def test_read_members_seeks_to_indexed_members_pax_headers_included(tmp_path: Path) -> None:
    tar = _rootfs(tmp_path / "rootfs.tar")
    long_name = "./usr/lib/grub/x86_64-efi/" + "m" * 120 + ".mod"  # needs a PAX path header
    with tarfile.open(tar, "a", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, long_name, b"module bytes")
    index = tarindex.index_tar(tar)
    wanted = [m for m in index.members if m.name in {"usr/bin/ping", "etc/hostname", long_name[2:]}]
    read = {member.name: data for member, data in ext4.read_members(index, wanted)}
    assert read == {"usr/bin/ping": b"ping", "etc/hostname": b"host\n", long_name[2:]: b"module bytes"}


def test_read_members_notices_a_tar_that_changed_since_indexing(tmp_path: Path) -> None:
    tar = _rootfs(tmp_path / "rootfs.tar")
    index = tarindex.index_tar(tar)
    [hostname] = [m for m in index.members if m.name == "etc/hostname"]
    for offset in (hostname.offset - 1024, hostname.offset + 512):  # another header; a data block
        moved = tarindex.TarMember("etc/hostname", offset, hostname.size, "file", "")
        with pytest.raises(DiskError, match="changed since it was indexed"):
            list(ext4.read_members(index, [moved]))
