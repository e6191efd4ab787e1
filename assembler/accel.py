"""Which QEMU accelerator really works here: /dev/kvm can exist while KVM guests hang (nested PVM)."""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
from pathlib import Path

from assembler.errors import MissingToolError
from assembler.fsutil import atomic_path
from assembler.run import spawn

PROBE_SECONDS = 15


def _probe_kernel() -> str | None:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    return kernels[-1] if kernels else None


def _probe_cache() -> Path:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    return base / f"assembler-kvm-probe-{boot_id}"


def _run_probe(qemu: str, kernel: str) -> bool:
    # A real kernel under KVM reaches its "no root fs" panic within a second or two; a hanging KVM
    # (nested PVM) prints nothing at all. -no-reboot + panic=-1 ends the guest after the panic.
    cmd = [
        qemu, "-accel", "kvm", "-m", "128", "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-kernel", kernel, "-append", "console=ttyS0 panic=-1 quiet loglevel=0",
    ]
    try:
        proc = spawn(cmd, output=subprocess.PIPE)
    except (OSError, MissingToolError):
        return False
    try:
        out, _ = proc.communicate(timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return False
    return b"Kernel panic" in out or proc.returncode == 0


@functools.cache
def kvm_usable() -> bool:
    """True only when a KVM guest really runs. ASSEMBLER_ACCEL=tcg|kvm overrides the probe."""
    forced = os.environ.get("ASSEMBLER_ACCEL", "").lower()
    if forced in ("tcg", "kvm"):
        return forced == "kvm"
    qemu = shutil.which("qemu-system-x86_64")
    kernel = _probe_kernel()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or qemu is None or kernel is None:
        return False
    cache = _probe_cache()
    if cache.exists():
        return cache.read_text().strip() == "kvm"
    usable = _run_probe(qemu, kernel)
    # A private temporary name: builds started together on a fresh boot probe together, and a shared one let
    # the first rename the second's (half-written) file away, failing the second's rename.
    with atomic_path(cache) as tmp:
        tmp.write_text("kvm" if usable else "tcg")
    return usable


def accelerator() -> str:
    """The -accel value to use for QEMU and libguestfs on this machine."""
    return "kvm" if kvm_usable() else "tcg"
