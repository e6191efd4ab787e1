"""QEMU for the boot test: a throw-away overlay, the argv, and a process that is always cleaned up.

This is the one place in assembler/boot that uses subprocess.Popen directly: QEMU runs for minutes
while we poll it, which run.run() (wait-for-exit) cannot do.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from assembler import measured
from assembler.config import DiskBus
from assembler.errors import BootError, ConfigError
from assembler.run import output, require_tool, run, spawn

# uefi-secureboot: OVMF with Microsoft's keys enrolled and Secure Boot enforcing (needs SMM, hence q35,smm=on
# and a secure pflash), so only Microsoft-signed first-stage loaders run: shim, then what shim verifies.
Firmware = Literal["bios", "uefi", "uefi-secureboot"]
FIRMWARES: tuple[Firmware, ...] = ("bios", "uefi", "uefi-secureboot")
# The controller the root disk sits on, i.e. the driver the image's initramfs must carry to find its root.
# QEMU emulates the controllers of most clouds; Hyper-V's storvsc and Xen's blkfront it cannot.
DISK_BUSES: dict[DiskBus, str] = {
    "virtio": "virtio-blk (KVM, OpenStack)",
    "scsi": "virtio-scsi (GCE, OpenStack)",
    "nvme": "NVMe (AWS Nitro, GCE, Azure v6)",
    "sata": "SATA/AHCI (vSphere, VirtualBox)",
    "pvscsi": "VMware PVSCSI (vSphere)",
}
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_CODE_SECURE = Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
OVMF_VARS_SECURE = measured.SECURE_BOOT_VARS
# arm64: QEMU's virt machine with AAVMF (edk2 for AArch64, Debian's qemu-efi-aarch64), UEFI only, TCG always.
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
EMULATORS = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
ARCH_FIRMWARES: dict[str, tuple[str, ...]] = {"amd64": FIRMWARES, "arm64": ("uefi",)}
UNAME_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
SUFFIX_FORMATS = {".raw": "raw", ".img": "raw", ".qcow2": "qcow2", ".vmdk": "vmdk", ".vhd": "vpc"}
FORMATS = frozenset({"raw", "qcow2", "vmdk", "vpc", "vhdx"})
STOP_GRACE_SECONDS = 5.0


FIRMWARE_CHOICES: dict[str, list[str]] = {"both": ["bios", "uefi"], "all": list(FIRMWARES)}


def firmware(name: str) -> Firmware:
    """Validate one firmware name."""
    for known in FIRMWARES:
        if name == known:
            return known
    raise ConfigError(f"unknown firmware {name!r}", resolution="use " + ", ".join(FIRMWARES))


def firmwares(choice: str) -> list[Firmware]:
    """A firmware choice (one name, `both` = bios + uefi, `all` = every firmware) as the boots to run."""
    names = FIRMWARE_CHOICES.get(choice, [choice])
    if choice not in FIRMWARE_CHOICES and choice not in FIRMWARES:
        raise ConfigError(f"unknown firmware {choice!r}",
                          resolution="use " + ", ".join([*FIRMWARES, *FIRMWARE_CHOICES]))
    return [firmware(name) for name in names]


def disk_format(disk: Path, fmt: str | None) -> str:
    """The qemu format name of a disk: explicit, else by suffix (a fixed VHD probes as raw), else probed."""
    if not disk.is_file():
        raise ConfigError(f"disk not found: {disk}",
                          resolution="pass the path of a disk image assembler built")
    if fmt is not None:
        name = "vpc" if fmt == "vhd" else fmt
        if name not in FORMATS:
            raise ConfigError(f"unknown disk format {fmt!r}",
                              resolution=f"use one of {', '.join(sorted(FORMATS))}")
        return name
    if disk.suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[disk.suffix]
    info = json.loads(output(["qemu-img", "info", "--output=json", disk]))
    return str(info["format"])


def make_overlay(disk: Path, fmt: str, dest: Path) -> Path:
    """A qcow2 overlay whose backing file is the artefact: the guest writes only to the overlay."""
    require_tool("qemu-img", "creates the copy-on-write overlay the guest boots from")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", disk.resolve(), dest],
        resolution="check the disk format (pass --format; a VHD is `vpc`)")
    return dest


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the SSH forward (the small race with other programs is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _opt(path: Path) -> str:
    # QEMU option values escape a comma by doubling it.
    return str(path).replace(",", ",,")


@dataclass(frozen=True)
class QemuSpec:
    overlay: Path
    seed: Path
    firmware: Firmware
    ssh_port: int
    console_log: Path
    accelerator: str
    ovmf_vars: Path | None = None
    disk_bus: DiskBus = "virtio"
    tpm_socket: Path | None = None  # swtpm's control socket: a TPM 2.0 (CRB) for the guest
    memory_mib: int = 1024
    cpus: int = 2
    arch: str = "amd64"


def disk_bus(name: str) -> DiskBus:
    """Validate a --disk-bus value."""
    if name not in DISK_BUSES:
        raise ConfigError(f"unknown disk bus {name!r}",
                          resolution="use one of " + ", ".join(f"{k} ({v})" for k, v in DISK_BUSES.items()))
    return name


def root_disk_devices(bus: DiskBus) -> list[str]:
    """The -device arguments that put drive `disk0` on `bus` as the first boot device."""
    # Each controller gets its own id; the seed ISO stays on virtio-blk, read only after the root is mounted.
    if bus == "virtio":
        return ["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]
    if bus == "nvme":
        return ["-device", "nvme,drive=disk0,serial=assembler-root,bootindex=0"]
    if bus == "sata":
        return ["-device", "ahci,id=rootctl", "-device", "ide-hd,drive=disk0,bus=rootctl.0,bootindex=0"]
    controller = "virtio-scsi-pci" if bus == "scsi" else "pvscsi"
    return ["-device", f"{controller},id=rootctl", "-device", "scsi-hd,drive=disk0,bus=rootctl.0,bootindex=0"]


def qemu_argv(spec: QemuSpec) -> list[str]:
    """The full qemu-system-x86_64 (or -aarch64) command line for one boot."""
    if spec.arch == "arm64":
        return _aarch64_argv(spec)
    # graphics=off makes SeaBIOS print to the serial port, so a disk that never boots still leaves a log.
    machine = {"bios": "pc", "uefi": "q35", "uefi-secureboot": "q35,smm=on"}[spec.firmware]
    argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", f"{machine},graphics=off", "-accel", spec.accelerator,
            "-m", str(spec.memory_mib), "-smp", str(spec.cpus)]
    if spec.accelerator == "kvm":
        argv += ["-cpu", "host"]
    if spec.firmware != "bios":
        if spec.ovmf_vars is None:
            raise ValueError("UEFI needs a per-run copy of the OVMF variable store")
        code = OVMF_CODE_SECURE if spec.firmware == "uefi-secureboot" else OVMF_CODE
        if spec.firmware == "uefi-secureboot":
            # Only SMM code may write the variable store: the guest cannot switch Secure Boot off.
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(code)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={_opt(spec.ovmf_vars)}"]
    if spec.tpm_socket is not None:
        argv += ["-chardev", f"socket,id=chrtpm,path={_opt(spec.tpm_socket)}",
                 "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0"]
    return argv + _devices(spec)


def _aarch64_argv(spec: QemuSpec) -> list[str]:
    if spec.firmware != "uefi" or spec.ovmf_vars is None or spec.tpm_socket is not None:
        raise ValueError("an arm64 guest boots plain UEFI (AAVMF) with a per-run variable store, without a TPM")
    if spec.disk_bus == "pvscsi":
        raise ConfigError("pvscsi is a VMware x86 controller; an arm64 guest cannot use it",
                          resolution="boot the arm64 disk on virtio, scsi, nvme or sata")
    # cortex-a72: what TCG emulates fastest among the CPUs Debian's arm64 kernel runs on (no SVE or pointer
    # authentication to emulate, unlike `max`).
    argv = ["qemu-system-aarch64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "virt", "-accel", "tcg", "-cpu", "cortex-a72",
            "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(AAVMF_CODE)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_opt(spec.ovmf_vars)}"]
    return argv + _devices(spec)


def _devices(spec: QemuSpec) -> list[str]:
    return [
        "-drive", f"if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap,file={_opt(spec.overlay)}",
        *root_disk_devices(spec.disk_bus),
        "-drive", f"if=none,id=seed,format=raw,readonly=on,file={_opt(spec.seed)}",
        "-device", "virtio-blk-pci,drive=seed",
        # restrict=on: the guest reaches nothing on the host or beyond (its loopback services included);
        # only the SSH forward is open, from the host's loopback to the guest.
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",  # no iPXE: never network-boot
        "-device", "virtio-rng-pci",
        "-chardev", f"file,id=console,path={_opt(spec.console_log)}",
        "-serial", "chardev:console",
    ]


def ovmf_vars_template(firmware: Firmware) -> Path:
    """The variable store a run starts from: Microsoft's keys enrolled for uefi-secureboot, else empty."""
    return OVMF_VARS_SECURE if firmware == "uefi-secureboot" else OVMF_VARS


def copy_ovmf_vars(workdir: Path, firmware: Firmware = "uefi", arch: str = "amd64") -> Path:
    """Each UEFI run gets its own writable variable store; the system template stays untouched."""
    if arch == "arm64":
        code, template, package = AAVMF_CODE, AAVMF_VARS, "qemu-efi-aarch64"
    else:
        code = OVMF_CODE_SECURE if firmware == "uefi-secureboot" else OVMF_CODE
        template, package = ovmf_vars_template(firmware), "ovmf"
    for path in (code, template):
        if not path.is_file():
            raise ConfigError(f"UEFI firmware not found: {path}", resolution=f"apt-get install {package}")
    dest = workdir / "OVMF_VARS.fd"
    shutil.copyfile(template, dest)
    return dest


# Every QEMU we started and have not reaped yet; atexit and signal handlers kill what is left.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Terminate QEMU's whole process group, escalate to SIGKILL, and reap it."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 30.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    _LIVE.pop(proc.pid, None)


def register(proc: subprocess.Popen[bytes]) -> None:
    """A helper process of a boot (swtpm) that must not outlive assembler either: killed with the QEMUs."""
    _LIVE[proc.pid] = proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    _kill(proc)


def kill_all() -> None:
    for proc in list(_LIVE.values()):
        _kill(proc)


atexit.register(kill_all)


class QemuProcess:
    """A running QEMU in its own process group; stderr goes to a file for error messages."""

    def __init__(self, argv: list[str], stderr_log: Path) -> None:
        require_tool(argv[0], "runs the boot test")
        self.argv = argv
        self.stderr_log = stderr_log
        # The kernel kills QEMU when assembler dies, even by SIGKILL (no handler, no atexit runs then); its own
        # session, so a stop takes its whole process group.
        with stderr_log.open("wb") as err:
            self.proc = spawn(argv, output=err, new_session=True)
        _LIVE[self.proc.pid] = self.proc
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> int | None:
        return self.proc.poll()

    def stderr_tail(self, lines: int = 10) -> str:
        text = self.stderr_log.read_text(errors="replace") if self.stderr_log.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        _kill(self.proc)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so `finally` blocks stop QEMU before the process exits."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def running_qemu(argv: list[str], stderr_log: Path) -> Iterator[QemuProcess]:
    """Start QEMU; stop it however the block ends (error, Ctrl-C, SIGTERM)."""
    handlers: dict[signal.Signals, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, _raise_terminated)
    qemu = None
    try:
        qemu = QemuProcess(argv, stderr_log)
        yield qemu
    finally:
        if qemu is not None:
            qemu.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def console_tail(console_log: Path, lines: int = 20) -> str:
    """The last lines of the serial console, with terminal escapes and carriage returns removed."""
    if not console_log.exists():
        return "(no console output)"
    raw = console_log.read_bytes()[-65536:].decode(errors="replace")
    text = _strip_escapes(raw)
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(no console output)"


def _strip_escapes(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[A-Za-z=>]", "", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or ch >= " ")


def check_started(qemu: QemuProcess, firmware: str, console_log: Path) -> None:
    """Fail with QEMU's own words when it exited (bad option, port taken, guest reset under -no-reboot)."""
    code = qemu.exited()
    if code is None:
        return
    raise BootError(
        f"QEMU exited (status {code}) before the guest brought up SSH ({firmware})",
        details=f"qemu stderr:\n{qemu.stderr_tail() or '(empty)'}\n"
        f"console tail:\n{console_tail(console_log)}",
        resolution="read the console tail: a guest that resets or finds no bootable device ends QEMU "
        "(-no-reboot); check the bootloader for this firmware",
    )


def wait_seconds_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
