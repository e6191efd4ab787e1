"""Free space: refuse a build in a second, with figures, rather than hit ENOSPC minutes into a phase.

The estimates are per phase that will run, sized for the images in Containerfiles/ (a ~0.8 GB rootfs
tar, a raw disk and each conversion about as large); outputs are copied to out/ as well, so the output
directory needs about as much again. They are deliberately rough: the point is to stop a build that
cannot finish, not to predict its size.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from assembler.errors import AssemblerError

GIB = 1 << 30
# GiB a phase of this kind writes into the store (and, for all but boot, once more into out/).
PHASE_GIB: Mapping[str, float] = {"rootfs": 1.0, "disk": 1.0, "convert": 1.0, "boot": 0.1}
FREE_SPACE_FIX = ("free some space (an old cache: rm -rf the --cache-dir), or point --cache-dir / --output at a "
                  "filesystem with more room, then rerun (finished phases are cached and are not redone)")


class NoSpaceError(AssemblerError):
    """A filesystem the build writes to is (or would become) full."""


def estimate(kinds: Iterable[str]) -> tuple[int, int]:
    """Bytes the phases of these kinds add to the store and to the output directory."""
    store = out = 0.0
    for kind in kinds:
        gib = PHASE_GIB.get(kind, 0.5)
        store += gib
        out += 0.0 if kind == "boot" else gib
    return int(store * GIB), int(out * GIB)


def _existing(path: Path) -> Path:
    """The nearest existing ancestor: the place that decides which filesystem `path` will be on."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    stat = os.statvfs(_existing(path))
    return stat.f_bavail * stat.f_frsize


def check_free_space(needs: Mapping[Path, int]) -> None:
    """Raise one NoSpaceError if any filesystem lacks room for what is planned on it (paths sharing a
    filesystem add up)."""
    by_device: dict[int, tuple[list[Path], int]] = {}
    for path, need in needs.items():
        device = os.stat(_existing(path)).st_dev
        paths, total = by_device.get(device, ([], 0))
        by_device[device] = ([*paths, path], total + need)
    for paths, need in by_device.values():
        free = free_bytes(paths[0])
        if free < need:
            where = " and ".join(str(p) for p in paths)
            raise NoSpaceError(
                f"not enough free space for this build: {free / GIB:.1f} GiB free, about {need / GIB:.1f} GiB needed",
                details=f"filesystem of {where}",
                resolution=FREE_SPACE_FIX,
            )


def no_space_error(exc: OSError) -> NoSpaceError | None:
    """The clear error for ENOSPC raised anywhere in a run; None for any other OSError."""
    if exc.errno != errno.ENOSPC:
        return None
    where = exc.filename or "a filesystem the build writes to"
    free = ""
    if exc.filename:
        free = f" ({free_bytes(Path(exc.filename)) / GIB:.1f} GiB free now)"
    return NoSpaceError(
        f"no space left on device while writing {where}{free}",
        details="the step was abandoned; files in progress were temporary and have been removed",
        resolution=FREE_SPACE_FIX,
    )
