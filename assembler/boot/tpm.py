"""A TPM 2.0 per boot (swtpm), and the built-in checks of a Secure Boot / measured boot as the guest sees it.

swtpm runs beside QEMU with a fresh state directory in the run's work directory, so every boot starts from
a TPM nobody has extended, and nothing of it outlives the run (it is stopped with QEMU, by the same
process-group kill, and `--terminate` ends it when QEMU closes the connection).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from assembler.boot import guest, qemu
from assembler.boot.checks import Probe, ProbeOutput
from assembler.errors import BootError
from assembler.run import require_tool, spawn

SOCKET_WAIT_SECONDS = 10.0
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EVENT_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
# What the console shows when Secure Boot refused a binary: shim's verification of grub or the kernel, or the
# firmware's of the first-stage loader. Seen, the boot cannot succeed: fail now, not at the SSH timeout.
REFUSALS = ("Verification failed: (0x1A) Security Violation", "Access Denied", "Security Violation",
            "bad shim signature", "you need to load the kernel first")


@contextlib.contextmanager
def running_swtpm(workdir: Path) -> Iterator[Path]:
    """Start swtpm on a fresh state; yield the control socket QEMU connects to; stop it however this ends."""
    require_tool("swtpm", "emulates the guest's TPM 2.0 (apt-get install swtpm)")
    state = workdir / "tpm"
    state.mkdir(parents=True)
    sock = state / "swtpm.sock"
    with (state / "swtpm.log").open("wb") as err:
        proc = spawn(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                      "--ctrl", f"type=unixio,path={sock}", "--terminate"], output=err, new_session=True)
    qemu.register(proc)
    try:
        deadline = time.monotonic() + SOCKET_WAIT_SECONDS
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (state / "swtpm.log").read_text(errors="replace").strip()[-500:]
                raise BootError("swtpm did not start", details=log_text or f"exit status {proc.poll()}",
                                resolution="check that swtpm 0.7 or later is installed (apt-get install swtpm)")
            time.sleep(0.05)
        yield sock
    finally:
        qemu.stop_process(proc)


def refusal(console_text: str) -> str | None:
    """The console line in which Secure Boot refused to run a binary, if any."""
    for line in console_text.splitlines():
        if any(marker in line for marker in REFUSALS):
            return line.strip()
    return None


def _judge_secure_boot(out: ProbeOutput) -> tuple[bool, str]:
    value = out.stdout.strip()
    if out.exit_status != 0:
        return False, f"the SecureBoot EFI variable is unreadable ({out.stderr.strip()[:200] or 'no efivars'})"
    return value == "1", f"SecureBoot = {value or '(empty)'}" + ("" if value == "1" else " (not enforcing)")


def _judge_lockdown(out: ProbeOutput) -> tuple[bool, str]:
    text = out.stdout.strip()
    # The kernel marks the active mode with brackets: "none [integrity] confidentiality".
    active = text[text.find("[") + 1:text.find("]")] if "[" in text else ""
    return active in ("integrity", "confidentiality"), f"lockdown: {text or out.stderr.strip()[:200]}"


def _judge_tpm(out: ProbeOutput) -> tuple[bool, str]:
    major = out.stdout.strip()
    found = major or out.stderr.strip()[:200]
    return out.exit_status == 0 and major == "2", (
        "TPM 2.0 at /dev/tpm0" if major == "2" else f"no TPM 2.0 (tpm_version_major: {found})")


def _judge_event_log(out: ProbeOutput) -> tuple[bool, str]:
    size = out.stdout.strip()
    ok = out.exit_status == 0 and size.isdigit() and int(size) > 0
    return ok, f"measured-boot event log: {size} bytes" if ok else f"event log unreadable: {out.stderr.strip()[:200]}"


def secure_boot_probes() -> list[Probe]:
    """Secure Boot enforcing as the guest sees it: the firmware's SecureBoot variable and the kernel's lockdown."""
    return [
        # efivarfs files start with 4 bytes of attributes; the variable's one byte follows.
        Probe("secure boot enabled", "secureboot",
              f"tail -c 1 /sys/firmware/efi/efivars/SecureBoot-{EFI_GLOBAL} | od -An -tu1", _judge_secure_boot),
        Probe("kernel lockdown", "secureboot", "cat /sys/kernel/security/lockdown", _judge_lockdown),
    ]


def tpm_probes() -> list[Probe]:
    """A TPM 2.0 the kernel found, and the firmware's measured-boot event log it exposes."""
    return [
        Probe("tpm present", "tpm", "test -c /dev/tpm0 && cat /sys/class/tpm/tpm0/tpm_version_major", _judge_tpm),
        Probe("measured-boot event log", "tpm", f"wc -c < {EVENT_LOG}", _judge_event_log),
    ]


MEASURED_PCRS = (4, 7)
EVENT_LOG_LIMIT = 1 << 20  # a firmware's log is tens of KiB; more is not a log


@dataclass(frozen=True)
class Measurements:
    """What the guest's TPM holds after boot: PCR values of the sha256 bank and the firmware's event log."""

    pcrs: dict[int, str]
    event_log: bytes


def read_measurements(ssh: guest.Ssh, timeout: float) -> Measurements:
    """PCRs 4 and 7 and the event log, read over SSH; the guest's output is untrusted and checked."""
    reads = " ".join(f'"$(cat /sys/class/tpm/tpm0/pcr-sha256/{pcr})"' for pcr in MEASURED_PCRS)
    out = ssh.run_settled(f"printf '%s\\n' {reads} && base64 -w0 {EVENT_LOG}", timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.exit_status != 0 or len(lines) != len(MEASURED_PCRS) + 1:
        raise BootError("could not read the guest's PCRs and event log",
                        details=f"exit {out.exit_status}: {out.stderr.strip()[-300:]}",
                        resolution="boot with --tpm; the kernel needs TPM support (tpm_crb) and securityfs")
    pcrs: dict[int, str] = {}
    for pcr, value in zip(MEASURED_PCRS, lines, strict=False):
        if not re.fullmatch(r"[0-9A-Fa-f]{64}", value.strip()):
            raise BootError(f"the guest reported a malformed PCR {pcr}", details=value[:100],
                            resolution="check the guest kernel's /sys/class/tpm/tpm0/pcr-sha256")
        pcrs[pcr] = value.strip().lower()
    encoded = lines[-1].strip()
    if len(encoded) > EVENT_LOG_LIMIT * 4 // 3 + 4:
        raise BootError("the guest's event log is implausibly large", details=f"{len(encoded)} base64 characters",
                        resolution="read it by hand in the guest: " + EVENT_LOG)
    try:
        log_bytes = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise BootError("the guest's event log is not valid base64", details=str(exc),
                        resolution="read it by hand in the guest: " + EVENT_LOG) from exc
    return Measurements(pcrs=pcrs, event_log=log_bytes)
