"""boot_disk (one firmware, one disk bus) and boot_test (hygiene once, alongside a boot per firmware and
disk bus): the boot engine."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from assembler import measured, progress
from assembler.accel import accelerator
from assembler.boot import guest, qemu, seed, stages, tpm
from assembler.boot.checks import CheckResult, CheckSuite, Probe, ProbeOutput, load_checks, merged
from assembler.boot.hygiene import check_artifact
from assembler.boot.junit import write_junit
from assembler.boot.report import BootReport, BootResult
from assembler.config import NATIVE_ARCH, DiskBus
from assembler.disk.gpt import disk_architecture
from assembler.errors import AssemblerError, BootError, ConfigError
from assembler.fsutil import atomic_path
from assembler.log import console, log

# Seconds the guest may take to settle (systemd's boot jobs, cloud-init) after SSH is up, beyond the boot timeout.
SETTLE_SECONDS = 180.0
PROBES_SECONDS = 300.0
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class _Run:
    disk: Path
    fmt: str
    firmware: qemu.Firmware
    disk_bus: DiskBus
    checks: CheckSuite
    timeout: float
    console_log: Path
    accelerator: str
    workdir: Path
    tpm: bool = False
    prediction: measured.Prediction | None = None
    arch: str = "amd64"


def boot_disk(disk: Path, *, fmt: str | None, firmware: qemu.Firmware, checks: CheckSuite, timeout: float,
              keep: bool, console_log: Path, disk_bus: DiskBus = "virtio", tpm: bool = False,
              prediction: measured.Prediction | None = None, arch: str = "amd64") -> BootResult:
    """Boot a throw-away overlay of `disk` with `firmware`, its root disk on `disk_bus`, log in with a fresh
    key, run the guest checks. `tpm`: a fresh TPM 2.0 (swtpm) for a uefi-secureboot boot (Debian's plain
    OVMF_CODE_4M.fd measures nothing: its guests have no event log), and the checks that it is there and holds
    the measured-boot event log; its PCRs 4 and 7 are compared with `prediction` (the disk phase's
    IMAGE.pcrs.json) when given.

    Raises BootError when the guest never brings up SSH (details: the console tail). QEMU is stopped
    whatever happens; `keep` leaves the work directory (overlay, seed, key) for debugging.
    """
    run = _Run(disk=disk, fmt=qemu.disk_format(disk, fmt), firmware=firmware, disk_bus=disk_bus,
               checks=checks, timeout=timeout,
               console_log=console_log, accelerator=_accelerator(arch),
               tpm=tpm and firmware == "uefi-secureboot", prediction=prediction, arch=arch,
               workdir=Path(tempfile.mkdtemp(prefix=f"assembler-boot-{firmware}-")))
    try:
        return _boot(run, keep)
    finally:
        if keep:
            console.print(f"kept the boot work directory (overlay, seed, SSH key): {run.workdir}")
        else:
            shutil.rmtree(run.workdir, ignore_errors=True)


def _guest_state(run: _Run) -> tuple[Path, Path | None]:
    """What a boot writes: a fresh overlay of the disk and, for UEFI, a fresh copy of the variable store."""
    overlay = run.workdir / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    qemu.make_overlay(run.disk, run.fmt, overlay)
    return overlay, qemu.copy_ovmf_vars(run.workdir, run.firmware, run.arch) if run.firmware != "bios" else None


def _boot(run: _Run, keep: bool) -> BootResult:
    overlay, ovmf_vars = _guest_state(run)
    key = seed.generate_key(run.workdir)
    seed_iso = seed.write_seed(run.workdir, key.public)
    run.console_log.parent.mkdir(parents=True, exist_ok=True)
    log.info("booting %s with %s, root disk on %s (%s), timeout %.0fs", run.disk.name, run.firmware,
             run.disk_bus, run.accelerator, run.timeout)
    panicked: str | None = None
    for attempt in range(PORT_ATTEMPTS + 1):
        try:
            with contextlib.ExitStack() as stack:
                socket = stack.enter_context(tpm.running_swtpm(run.workdir / f"try{attempt}")) if run.tpm else None
                spec = qemu.QemuSpec(overlay=overlay, seed=seed_iso, firmware=run.firmware,
                                     ssh_port=qemu.free_port(), console_log=run.console_log,
                                     accelerator=run.accelerator, ovmf_vars=ovmf_vars, disk_bus=run.disk_bus,
                                     tpm_socket=socket, arch=run.arch)
                result = _boot_once(run, spec, guest.Ssh(port=spec.ssh_port, key=key.private,
                                                         control=run.workdir / f"mux{attempt}"))
        except _PortTaken:
            log.debug("port %d was taken before QEMU bound it (attempt %d)", spec.ssh_port, attempt + 1)
            continue
        except _Panicked as exc:
            if panicked is not None or run.accelerator != "tcg":
                raise BootError(f"the guest kernel panicked ({run.firmware}, root disk on {run.disk_bus}, "
                                f"{run.accelerator})" + (", twice" if panicked else ""),
                                details=f"console: {exc.line}\nlast console lines:\n"
                                f"{qemu.console_tail(run.console_log)}",
                                resolution=f"read {run.console_log}: the image's kernel or initramfs fails") from None
            # TCG's emulation of a multi-vCPU guest patching its own code (int3 text pokes) can oops a kernel
            # that boots fine elsewhere; once is the emulator, twice is the image. The first console is kept.
            panicked = exc.line
            shutil.copyfile(run.console_log, run.console_log.with_suffix(".panic.log"))
            log.warning("%s/%s: the guest kernel panicked under TCG (%s); booting once more on a fresh overlay",
                        run.firmware, run.disk_bus, exc.line)
            overlay, ovmf_vars = _guest_state(run)
            continue
        if panicked is not None:
            note = CheckResult(name="boot retried", kind="boot", passed=True,
                               message=f"the first boot's kernel panicked under TCG ({panicked}); console kept "
                               f"as {run.console_log.with_suffix('.panic.log').name}")
            result = result.model_copy(update={"results": [note, *result.results]})
        return result.model_copy(update={"workdir": str(run.workdir) if keep else None})
    raise BootError("QEMU could not bind a local port for SSH forwarding",
                    resolution="retry; another program is racing for free ports")


class _PortTaken(Exception):
    pass


class _Panicked(Exception):
    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


PANIC = "Kernel panic - not syncing"


def _boot_once(run: _Run, spec: qemu.QemuSpec, ssh: guest.Ssh) -> BootResult:
    with qemu.running_qemu(qemu.qemu_argv(spec), run.workdir / "qemu.log") as vm:
        try:
            return _boot_and_check(run, vm, ssh)
        finally:
            ssh.close()  # the shared SSH connection ends before the guest does


def _boot_and_check(run: _Run, vm: qemu.QemuProcess, ssh: guest.Ssh) -> BootResult:
    started = time.monotonic()
    progress.stage("firmware")
    watch = stages.ConsoleWatch(run.console_log, started, progress.stage)
    with watch.running():
        _wait_for_ssh(run, vm, ssh, started + run.timeout)
    boot_seconds = time.monotonic() - started
    split = stages.split(watch.times, round(boot_seconds, 1))
    log.info("%s/%s: SSH up after %.1fs (%s); running checks", run.firmware, run.disk_bus, boot_seconds,
             ", ".join(f"{name} {seconds:.1f}s" for name, seconds in split.items()) or "no console markers")
    progress.stage("SSH up; running the checks")
    results = [CheckResult(name="ssh login", kind="boot", passed=True,
                           message=f"root login with the injected key after {boot_seconds:.1f}s")]
    results += _guest_checks(run, ssh)
    pcrs: dict[str, str] = {}
    event_log = None
    if run.tpm:
        check, pcrs, saved = _measured_boot(run, ssh)
        results.append(check)
        event_log = saved or None
    checks_seconds = time.monotonic() - started - boot_seconds
    return BootResult(firmware=run.firmware, disk_bus=run.disk_bus, accelerator=run.accelerator, booted=True,
                      boot_seconds=round(boot_seconds, 1), checks_seconds=round(checks_seconds, 1),
                      stages=split, results=results, console_log=str(run.console_log), pcrs=pcrs,
                      event_log=event_log)


def _measured_boot(run: _Run, ssh: guest.Ssh) -> tuple[CheckResult, dict[str, str], str]:
    """Read PCRs 4 and 7 and the event log, keep the log beside the console log, compare with the prediction."""
    try:
        found = tpm.read_measurements(ssh, PROBES_SECONDS)
    except BootError as exc:  # a verdict on the guest's measured boot, not on whether it booted
        return CheckResult(name="measured boot", kind="tpm", passed=False,
                           message=f"{exc.brief}: {exc.details}".strip(": ")), {}, ""
    saved = run.console_log.with_name(run.console_log.stem.replace("console", "eventlog", 1) + ".bin")
    with atomic_path(saved) as tmp:
        tmp.write_bytes(found.event_log)
    pcrs = {str(pcr): value for pcr, value in sorted(found.pcrs.items())}
    shown = ", ".join(f"PCR {pcr} {value[:16]}…" for pcr, value in pcrs.items())
    events = measured.parse_event_log(found.event_log)
    if run.prediction is None:
        return CheckResult(name="measured boot", kind="tpm", passed=True,
                           message=f"{shown} ({len(events)} events; no prediction given: recorded)"), pcrs, str(saved)
    problems = measured.compare(run.prediction, events, found.pcrs)
    message = f"{shown} equal the prediction" if not problems else "; ".join(problems)[:2000]
    return CheckResult(name="measured boot", kind="tpm", passed=not problems, message=message), pcrs, str(saved)


def _wait_for_ssh(run: _Run, vm: qemu.QemuProcess, ssh: guest.Ssh, deadline: float) -> None:
    def still_running() -> None:
        if vm.exited() is not None and "host forwarding" in vm.stderr_tail():
            raise _PortTaken
        qemu.check_started(vm, run.firmware, run.console_log)
        tail = qemu.console_tail(run.console_log, lines=400)
        if PANIC in tail:  # a panicked kernel never brings up SSH: no point waiting out the timeout
            raise _Panicked(next(line.strip() for line in tail.splitlines() if PANIC in line))
        if run.firmware == "uefi-secureboot":
            _check_not_refused(run, tail)

    try:
        guest.wait_for_ssh(ssh, deadline, still_running)
    except TimeoutError as exc:
        raise BootError(
            f"the guest did not bring up SSH within {run.timeout:.0f}s ({run.firmware}, root disk on "
            f"{run.disk_bus}, {run.accelerator})",
            details=f"last ssh attempt: {exc}\nlast console lines:\n{qemu.console_tail(run.console_log)}",
            resolution=f"read {run.console_log}; the image needs a bootloader for {run.firmware}, "
            "console=ttyS0 on the kernel command line, openssh-server and cloud-init (NoCloud); "
            "under TCG allow --timeout 300 or more; a root disk on another --disk-bus needs that controller's "
            "driver in the initramfs",
        ) from None


def _check_not_refused(run: _Run, tail: str) -> None:
    """A binary Secure Boot refused never boots: say which, now, instead of waiting out the timeout."""
    line = tpm.refusal(tail)
    if line is not None:
        raise BootError(
            f"Secure Boot refused to run the boot chain ({run.firmware}, root disk on {run.disk_bus})",
            details=f"console: {line}\nlast console lines:\n{qemu.console_tail(run.console_log)}",
            resolution="the ESP must hold the image's signed shim (BOOTX64.EFI) and signed grub (grubx64.efi) "
            "and the kernel must be Debian-signed: set secure_boot: true in image.yaml with shim-signed and "
            "grub-efi-amd64-signed installed, and rebuild; a modified binary breaks its signature",
        )


def _guest_checks(run: _Run, ssh: guest.Ssh) -> list[CheckResult]:
    """cloud-init's verdict (its result.json, waited for) is asked for as soon as SSH is up, on a session of
    its own beside systemd's settle wait; the other probes run once the boot has settled."""
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-init-wait") as pool:
        cloud_init = (pool.submit(guest.run_probes, ssh, [guest.cloud_init_probe(SETTLE_SECONDS)], PROBES_SECONDS)
                      if run.checks.boot.cloud_init else None)
        results = [guest.wait_system_running(ssh, SETTLE_SECONDS, run.checks.boot.allow_degraded)]
        settled = time.monotonic()
        probes = [_machine_probe(run.arch), *run.checks.probes()]
        if run.firmware == "uefi-secureboot":
            probes += tpm.secure_boot_probes()
        if run.tpm:
            probes += tpm.tpm_probes()
        results += guest.run_probes(ssh, probes, PROBES_SECONDS)
        probed = time.monotonic()
        results = (cloud_init.result() if cloud_init is not None else []) + results
    log.debug("%s/%s: boot settled %.1fs after SSH, %d probes in %.1fs, cloud-init's verdict %.1fs after them",
              run.firmware, run.disk_bus, settled - began, len(probes), probed - settled, time.monotonic() - probed)
    return results


def _accelerator(arch: str) -> str:
    return accelerator() if arch == NATIVE_ARCH else "tcg"  # another architecture is always emulated


def _machine_probe(arch: str) -> Probe:
    """The guest runs the disk's architecture (`uname -m`): what an arm64 build is for."""
    want = qemu.UNAME_MACHINE[arch]

    def judge(out: ProbeOutput) -> tuple[bool, str]:
        got = out.stdout.strip()
        return got == want, f"uname -m: {got[:40]!r}" + ("" if got == want else f", expected {want}")

    return Probe("architecture", "command", "uname -m", judge)


def firmwares_of_arch(arch: str, firmwares: list[qemu.Firmware] | list[str]) -> list[str]:
    """An image's declared boot firmwares (written for amd64) as the boots of an `arch` build: those the
    architecture has, else its own (arm64: plain UEFI for an image that declares `firmware: bios`)."""
    usable = [str(f) for f in firmwares if f in qemu.ARCH_FIRMWARES[arch]]
    return usable or [qemu.ARCH_FIRMWARES[arch][0]]


def _firmwares_for(arch: str, firmwares: list[qemu.Firmware] | list[str]) -> list[str]:
    """The asked firmwares this architecture has (arm64: UEFI only); none of them is one clear error."""
    usable = [str(f) for f in firmwares if f in qemu.ARCH_FIRMWARES[arch]]
    skipped = [str(f) for f in firmwares if f not in qemu.ARCH_FIRMWARES[arch]]
    if skipped and usable:
        log.warning("an %s disk boots %s only: not booting it with %s", arch,
                    ", ".join(qemu.ARCH_FIRMWARES[arch]), ", ".join(skipped))
    if not usable:
        raise ConfigError(f"an {arch} disk cannot boot with {', '.join(skipped)}",
                          resolution=f"boot it with --firmware {qemu.ARCH_FIRMWARES[arch][0]}")
    return usable


def boot_test(disk: Path, firmwares: list[qemu.Firmware] | list[str], checks_file: Path | None,
              timeout: float, keep: bool, out_dir: Path, fmt: str | None = None,
              disk_buses: list[DiskBus] | None = None, tpm: bool = False,
              prediction: measured.Prediction | None = None, extra_checks: CheckSuite | None = None,
              arch: str | None = None) -> BootReport:
    """Hygiene of the artefact once, alongside a boot per firmware and disk bus (one at a time; default
    virtio-blk); writes console logs and junit.xml into out_dir. A boot that fails is recorded, not raised,
    so every combination gets tried. `arch`: the disk's architecture, read from its GPT when not given."""
    checks = load_checks(checks_file)
    if extra_checks is not None:  # a customisation's: the guest shows each of its items
        checks = merged(checks, extra_checks)
    fmt = qemu.disk_format(disk, fmt)
    arch = arch or disk_architecture(disk, fmt)
    firmwares = _firmwares_for(arch, firmwares)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The hygiene checks read the artefact (read-only), never the guest, which runs on its own overlay: so the
    # libguestfs appliance runs while the first guest boots, each TCG VM on its own core, instead of before it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hygiene") as pool:
        pending = pool.submit(_hygiene, disk, fmt, checks)
        runs = [_boot_or_record(disk, fmt, firmware, bus, checks, timeout, keep, out_dir, tpm, prediction, arch)
                for firmware in firmwares for bus in (disk_buses or ["virtio"])]
        hygiene, hygiene_seconds = pending.result()
    report = BootReport(disk=str(disk), format=fmt, hygiene=hygiene,
                        hygiene_seconds=round(hygiene_seconds, 1), runs=runs)
    junit = write_junit(report, out_dir / "junit.xml")
    return report.model_copy(update={"junit": str(junit)})


def _hygiene(disk: Path, fmt: str, checks: CheckSuite) -> tuple[list[CheckResult], float]:
    # A disk libguestfs cannot read is a failed check, not the end of the test: the boots still tell more.
    try:
        return check_artifact(disk, fmt, checks.hygiene)
    except AssemblerError as exc:
        message = f"{exc.brief}: {exc.details}".strip(": ")
        return [CheckResult(name="read artifact", kind="hygiene", passed=False, message=message)], 0.0


def _boot_or_record(disk: Path, fmt: str, firmware: str, bus: DiskBus, checks: CheckSuite, timeout: float,
                    keep: bool, out_dir: Path, tpm: bool = False,
                    prediction: measured.Prediction | None = None, arch: str = "amd64") -> BootResult:
    typed = qemu.firmware(firmware)
    console_log = out_dir / (f"console-{firmware}.log" if bus == "virtio" else f"console-{firmware}-{bus}.log")
    try:
        with progress.activity(firmware if bus == "virtio" else f"{firmware}/{bus}"):
            return boot_disk(disk, fmt=fmt, firmware=typed, checks=checks, timeout=timeout, keep=keep,
                             console_log=console_log, disk_bus=bus, tpm=tpm, prediction=prediction, arch=arch)
    except BootError as exc:
        return BootResult(firmware=firmware, disk_bus=bus, accelerator=_accelerator(arch), booted=False,
                          error=f"{exc.brief}\n{exc.details}".strip(), console_log=str(console_log))
