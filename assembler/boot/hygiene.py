"""Image hygiene: what must NOT be in an artefact, read from the disk itself before it ever boots.

Every machine made from an image would otherwise share host keys, a machine-id, a cloud-init instance,
or carry the builder's shell history and package caches. One read-only libguestfs launch per artefact.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from assembler.boot.checks import HYGIENE_CHECKS, CheckResult, HygieneOptions

LOCKED_PASSWORD_PREFIXES = ("*", "!")
APT_LIST_KEEP = frozenset({"lock", "partial", "auxfiles"})


class Tree(Protocol):
    """The read-only view of a root filesystem the checks need (guestfs in production)."""

    def glob(self, pattern: str) -> list[str]: ...
    def read(self, path: str) -> bytes | None: ...
    def listdir(self, path: str) -> list[str]: ...
    def du_kib(self, path: str) -> int: ...


class GuestfsTree:
    """Tree over a launched libguestfs handle with the root mounted."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.handle.glob_expand(pattern))

    def read(self, path: str) -> bytes | None:
        if not self.handle.is_file(path, followsymlinks=True):
            return None
        return bytes(self.handle.read_file(path))

    def listdir(self, path: str) -> list[str]:
        return sorted(self.handle.ls(path)) if self.handle.is_dir(path) else []

    def du_kib(self, path: str) -> int:
        return int(self.handle.du(path)) if self.handle.is_dir(path) else 0


class LocalTree:
    """Tree over a directory on the host (an unpacked rootfs)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def glob(self, pattern: str) -> list[str]:
        return sorted("/" + str(p.relative_to(self.root)) for p in self.root.glob(pattern.lstrip("/")))

    def read(self, path: str) -> bytes | None:
        host = self._host(path)
        return host.read_bytes() if host.is_file() else None

    def listdir(self, path: str) -> list[str]:
        host = self._host(path)
        return sorted(p.name for p in host.iterdir()) if host.is_dir() else []

    def du_kib(self, path: str) -> int:
        host = self._host(path)
        files = [p for p in host.rglob("*") if p.is_file() and not p.is_symlink()] if host.is_dir() else []
        return sum(p.stat().st_blocks * 512 for p in files) // 1024


def _none_of(tree: Tree, patterns: list[str], what: str) -> tuple[bool, str]:
    found = [path for pattern in patterns for path in tree.glob(pattern)]
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        return False, f"{what} present: {shown}"
    return True, f"no {what}"


def ssh_host_keys(tree: Tree, _opts: HygieneOptions) -> tuple[bool, str]:
    return _none_of(tree, ["/etc/ssh/ssh_host_*"], "SSH host keys")


def machine_id(tree: Tree, _opts: HygieneOptions) -> tuple[bool, str]:
    content = tree.read("/etc/machine-id")
    if content is None:
        return True, "absent (systemd creates it at first boot)"
    value = content.decode(errors="replace").strip()
    if value in ("", "uninitialized"):
        return True, f"{value or 'empty'}"
    return False, f"/etc/machine-id holds {value[:32]!r}; every machine from this image would share it"


def cloud_init_instance(tree: Tree, _opts: HygieneOptions) -> tuple[bool, str]:
    leftovers = [f"/var/lib/cloud/{name}" for name in tree.listdir("/var/lib/cloud")
                 if fnmatch.fnmatch(name, "instance*")]
    leftovers += tree.glob("/var/lib/cloud/data/instance-id")
    if leftovers:
        return False, f"cloud-init instance data present: {', '.join(leftovers)} (run `cloud-init clean`)"
    return True, "no cloud-init instance data"


def shell_history(tree: Tree, _opts: HygieneOptions) -> tuple[bool, str]:
    return _none_of(tree, ["/root/.*_history", "/home/*/.*_history"], "shell history")


def authorized_keys(tree: Tree, opts: HygieneOptions) -> tuple[bool, str]:
    patterns = ["/root/.ssh/authorized_keys", "/home/*/.ssh/authorized_keys"]
    found = [path for pattern in patterns for path in tree.glob(pattern)
             if path not in opts.allowed_authorized_keys]
    if found:
        return False, f"baked-in authorized_keys present: {', '.join(found[:5])}"
    declared = f" (declared: {', '.join(opts.allowed_authorized_keys)})" if opts.allowed_authorized_keys else ""
    return True, f"no baked-in authorized_keys{declared}"


def apt_lists(tree: Tree, _opts: HygieneOptions) -> tuple[bool, str]:
    left = [name for name in tree.listdir("/var/lib/apt/lists") if name not in APT_LIST_KEEP]
    if left:
        return False, (f"{len(left)} apt list files in /var/lib/apt/lists (e.g. {left[0]}); "
                       "run `rm -rf /var/lib/apt/lists/*` in the step that ran apt-get update")
    return True, "no apt lists"


def apt_caches(tree: Tree, _opts: HygieneOptions) -> tuple[bool, str]:
    return _none_of(tree, ["/var/cache/apt/*.bin", "/var/cache/apt/archives/*.deb"], "apt caches")


def var_log_size(tree: Tree, opts: HygieneOptions) -> tuple[bool, str]:
    mib = tree.du_kib("/var/log") / 1024
    if mib > opts.max_var_log_mib:
        limit = opts.max_var_log_mib
        return False, f"/var/log uses {mib:.1f} MiB, limit {limit:g} MiB (hygiene.max_var_log_mib)"
    return True, f"/var/log uses {mib:.1f} MiB (limit {opts.max_var_log_mib:g})"


def root_password(tree: Tree, _opts: HygieneOptions) -> tuple[bool, str]:
    shadow = tree.read("/etc/shadow")
    if shadow is None:
        return True, "no /etc/shadow"
    for line in shadow.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            if fields[1].startswith(LOCKED_PASSWORD_PREFIXES):
                return True, "root password locked"
            state = "empty" if fields[1] == "" else "set"
            return False, f"root password is {state}; lock it (`passwd -l root`), inject keys at boot instead"
    return True, "no root entry in /etc/shadow"


def core_dumps(tree: Tree, _opts: HygieneOptions) -> tuple[bool, str]:
    return _none_of(tree, ["/var/lib/systemd/coredump/*", "/core", "/core.*"], "core dumps")


HygieneCheck = Callable[[Tree, HygieneOptions], tuple[bool, str]]


def _by_name() -> dict[str, HygieneCheck]:
    # checks.HYGIENE_CHECKS is the one list of names: `hygiene.skip` is validated against it when a checks
    # file is read, and checks.py cannot import this module (it imports checks.py). Each name's check is the
    # function of that name here, so a name without one fails at import, not when a boot reaches it.
    functions = globals()
    missing = [name for name in HYGIENE_CHECKS if not callable(functions.get(name.replace("-", "_")))]
    if missing:
        raise LookupError(f"checks.HYGIENE_CHECKS names {missing}, which have no function in {__name__}")
    return {name: functions[name.replace("-", "_")] for name in HYGIENE_CHECKS}


REGISTRY: dict[str, HygieneCheck] = _by_name()


def run_hygiene(tree: Tree, opts: HygieneOptions) -> list[CheckResult]:
    """Run every built-in hygiene check that is not skipped against a root tree."""
    results = []
    for name, check in REGISTRY.items():
        if name in opts.skip:
            continue
        passed, message = check(tree, opts)
        results.append(CheckResult(name=name, kind="hygiene", passed=passed, message=message))
    return results


def check_artifact(disk: Path, fmt: str | None, opts: HygieneOptions) -> tuple[list[CheckResult], float]:
    """Open the artefact read-only (one appliance launch) and run the hygiene checks; returns seconds too."""
    from assembler.guestfs import mount_root, open_disk

    started = time.monotonic()
    with open_disk(disk, fmt=fmt, readonly=True) as handle:
        mount_root(handle)
        results = run_hygiene(GuestfsTree(handle), opts)
    return results, time.monotonic() - started
