"""The only module that imports libguestfs: opens disks read-only, picks TCG when KVM does not work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from assembler.accel import kvm_usable
from assembler.errors import AssemblerError


def _import_guestfs() -> Any:
    try:
        import guestfs
    except ImportError as exc:
        raise AssemblerError(
            "the libguestfs Python bindings are not importable",
            details=str(exc),
            resolution="run `make setup` (installs python3-guestfs and a venv with system site packages)",
        ) from exc
    return guestfs


def _backend_env() -> None:
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    if not kvm_usable():
        settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "")
        if "force_tcg" not in settings:
            os.environ["LIBGUESTFS_BACKEND_SETTINGS"] = ",".join(s for s in (settings, "force_tcg") if s)


@contextmanager
def open_disk(disk: Path, *, fmt: str | None = None, readonly: bool = True) -> Iterator[Any]:
    """Launch one appliance on `disk`; yields a handle with every filesystem of the disk discoverable."""
    guestfs = _import_guestfs()
    _backend_env()
    handle = guestfs.GuestFS(python_return_dict=True)
    try:
        kwargs: dict[str, Any] = {"readonly": readonly}
        if fmt:
            kwargs["format"] = fmt
        handle.add_drive_opts(str(disk), **kwargs)
        handle.launch()
        yield handle
    except RuntimeError as exc:
        raise AssemblerError(
            f"libguestfs failed on {disk}",
            details=str(exc),
            resolution="check the disk is a valid image; set LIBGUESTFS_DEBUG=1 for the appliance log",
        ) from exc
    finally:
        try:
            handle.shutdown()
        finally:
            handle.close()


def mount_root(handle: Any) -> str:
    """Mount the root filesystem (the ext4 holding /etc) read-only at / and the ESP under /boot/efi."""
    filesystems: dict[str, str] = handle.list_filesystems()
    root = None
    for device, fstype in filesystems.items():
        if fstype in ("ext4", "ext3", "ext2", "xfs", "btrfs"):
            handle.mount_ro(device, "/")
            if handle.is_dir("/etc"):
                root = device
                break
            handle.umount("/")
    if root is None:
        raise AssemblerError("no root filesystem found on the disk", details=str(filesystems))
    for device, fstype in filesystems.items():
        if fstype == "vfat" and handle.is_dir("/boot/efi"):
            handle.mount_ro(device, "/boot/efi")
    return root
