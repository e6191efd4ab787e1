"""Talking to the booted guest over SSH: wait for it, wait for boot to settle, run all probes in one go."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from assembler.boot.checks import CheckResult, Probe, ProbeOutput
from assembler.errors import BootError
from assembler.log import log
from assembler.run import require_tool, run

T = TypeVar("T")
CONNECT_TIMEOUT = 5
POLL_INTERVAL = 2.0
# Until sshd answers, the forwarded port is knocked on this often: a TCP connect and a read of the banner cost
# the host nothing and the guest one accept, where a whole ssh login attempt costs a process and a key exchange.
BANNER_POLL = 0.25
BANNER_TIMEOUT = 3.0  # sshd-session takes over a second to greet under TCG: do not hang up on it
# The shared connection outlives its last session by this long: only a run killed before it closes the master
# itself leaves one behind, and not for longer (QEMU's exit ends it sooner).
MASTER_IDLE_SECONDS = 30
PROBE_CONCURRENCY = 8
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"  # written by cloud-init's final stage
RESULT_LIMIT = 1 << 16
# ssh's own failures (exit 255 and one of these): not a verdict on the guest. Right after the first login
# cloud-init's ssh module writes the host keys and restarts sshd, so a connection can be reset once SSH is up.
TRANSPORT_ERRORS = ("Connection reset", "Connection refused", "Connection closed", "kex_exchange_identification",
                    "Broken pipe", "Connection timed out", "No route to host")


def transport_failed(exit_status: int, stderr: str) -> bool:
    """True when ssh could not hold a connection, as opposed to the remote command failing."""
    return exit_status == 255 and any(marker in stderr for marker in TRANSPORT_ERRORS)


@dataclass(frozen=True)
class Ssh:
    """How to reach the guest: root on a forwarded localhost port with the run's key."""

    port: int
    key: Path
    user: str = "root"
    host: str = "127.0.0.1"
    # A multiplexing socket: the login that finds the guest up opens one connection (ControlMaster) and every
    # later session (settle waits, probes, TPM reads) is a channel on it, without a key exchange and an
    # authentication each, which cost the TCG guest about a second apiece, and without sshd restarts in between.
    control: Path | None = None

    def argv(self, remote: str, *, master: bool = False) -> list[str]:
        # No known_hosts: every run's guest has fresh host keys, and the port is local and ours.
        mux: list[str] = []
        if self.control is not None:
            mux = ["-o", f"ControlPath={self.control}", "-o", f"ControlMaster={'yes' if master else 'no'}"]
            if master:
                mux += ["-o", f"ControlPersist={MASTER_IDLE_SECONDS}"]
        return ["ssh", "-i", str(self.key), "-p", str(self.port), "-T",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6", *mux,
                f"{self.user}@{self.host}", remote]

    def login(self, *, timeout: float) -> ProbeOutput:
        """`true` on a new connection, kept open as the shared one when `control` is set."""
        return self._run(self.argv("true", master=True), timeout=timeout)

    def close(self) -> None:
        """End the shared connection, if one is open."""
        if self.control is not None and self.control.exists():
            run(["ssh", "-o", f"ControlPath={self.control}", "-O", "exit", f"{self.user}@{self.host}"],
                check=False, timeout=10)

    def banner(self) -> bool:
        """True when something answers the forwarded port with an SSH banner (sshd listens in the guest)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=BANNER_TIMEOUT) as conn:
                conn.settimeout(BANNER_TIMEOUT)
                return conn.recv(4).startswith(b"SSH-")
        except OSError:  # refused, reset, or QEMU's forwarder holding the connection while the guest is down
            return False

    def run(self, remote: str, *, timeout: float, stdin: bytes | None = None) -> ProbeOutput:
        """Run a remote command; a local timeout counts as exit status 124, like timeout(1)."""
        return self._run(self.argv(remote), timeout=timeout, stdin=stdin)

    def _run(self, argv: list[str], *, timeout: float, stdin: bytes | None = None) -> ProbeOutput:
        try:
            proc = run(argv, check=False, timeout=timeout, input_bytes=stdin)
        except subprocess.TimeoutExpired:
            return ProbeOutput(124, "", f"timed out after {timeout:.0f}s")
        return ProbeOutput(proc.returncode, proc.stdout.decode(errors="replace"),
                           proc.stderr.decode(errors="replace"))

    def run_settled(self, remote: str, *, timeout: float) -> ProbeOutput:
        """run(), repeated while ssh itself fails (sshd restarting), until `timeout` is spent."""
        return settled(lambda left: self.run(remote, timeout=left),
                       lambda out: connection_lost(out.exit_status, out.stdout, out.stderr), timeout)


def connection_lost(exit_status: int, stdout: str | bytes, stderr: str | bytes) -> bool:
    """ssh failed to connect and nothing ran remotely: safe to try again."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return not stdout and transport_failed(exit_status, text)


def settled(attempt: Callable[[float], T], lost: Callable[[T], bool], timeout: float) -> T:
    """attempt(seconds left) again while `lost` says the connection dropped before anything ran, until
    `timeout` is spent: the one retry loop for every SSH call made after the guest came up."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt(max(deadline - time.monotonic(), 1.0))
        if not lost(result) or time.monotonic() + POLL_INTERVAL >= deadline:
            return result
        log.debug("ssh connection to the guest failed (sshd restarting?); retrying")
        time.sleep(POLL_INTERVAL)


def wait_for_ssh(ssh: Ssh, deadline: float, still_running: Callable[[], None]) -> None:
    """Poll until a command runs in the guest; `still_running` raises when QEMU died meanwhile.

    On timeout, raises TimeoutError carrying ssh's last complaint: "Connection refused/reset" means
    sshd never listened, "Permission denied" means sshd ran but the seed's key never reached root.
    """
    require_tool("ssh", "logs in to the booted guest")
    last = "no attempt"
    while True:
        still_running()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(last)
        if not ssh.banner():  # sshd is not up yet: knock again soon, with no ssh process or key exchange
            last = "no SSH banner on the forwarded port (sshd not listening in the guest yet)"
            time.sleep(min(BANNER_POLL, max(0.0, deadline - time.monotonic())))
            continue
        out = ssh.login(timeout=min(CONNECT_TIMEOUT + 10, max(remaining, 1)))
        if out.exit_status == 0:
            return
        last = (out.stderr.strip().splitlines() or [f"exit {out.exit_status}"])[-1]
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def cloud_init_probe(timeout: float) -> Probe:
    """cloud-init finished, without errors: its final stage writes /run/cloud-init/result.json (what `cloud-init
    status` reads), waited for in the shell and judged on the host. Not `cloud-init status --wait`: that is a
    Python start of 2-3 s of a TCG guest's CPU, which was the longest part of the checks. Asked for as soon
    as SSH is up, beside systemd's settle wait; `timeout`: seconds it may still take."""
    script = (f"i=0; while [ ! -e {CLOUD_INIT_RESULT} ] && [ $i -lt {int(timeout * 10)} ]; do sleep 0.1; "
              f"i=$((i+1)); done; head -c {RESULT_LIMIT} {CLOUD_INIT_RESULT}")

    def judge(out: ProbeOutput) -> tuple[bool, str]:
        if out.exit_status != 0:
            return False, _last_lines(out, f"no {CLOUD_INIT_RESULT} after {timeout:.0f}s: cloud-init did not "
                                      "finish (disabled, or no datasource found)")
        try:  # the guest's file: untrusted, only read
            v1 = json.loads(out.stdout)["v1"]
            errors, recoverable = v1.get("errors") or [], v1.get("recoverable_errors") or {}
        except (ValueError, TypeError, KeyError, AttributeError):
            return False, f"unreadable {CLOUD_INIT_RESULT}: {out.stdout[:200]!r}"
        if errors:
            return False, f"status error: {'; '.join(str(e) for e in errors)[:500]}"
        if recoverable:
            return False, f"status degraded done: {str(recoverable)[:500]}"
        return True, f"status done (datasource {str(v1.get('datasource'))[:120]})"

    return Probe("cloud-init finished", "boot", script, judge)


def wait_system_running(ssh: Ssh, timeout: float, allow_degraded: bool) -> CheckResult:
    """`systemctl is-system-running --wait`: running passes, degraded only when the checks allow it."""
    out = ssh.run_settled("systemctl is-system-running --wait", timeout=timeout)
    if out.exit_status == 124:
        state = f"still {out.stdout.strip() or 'starting'} after {timeout:.0f}s"
    else:
        lines = out.stdout.strip().splitlines()
        state = lines[-1] if lines else f"unknown ({out.stderr.strip()})"
    passed = state == "running" or (state == "degraded" and allow_degraded)
    message = state
    if state != "running":
        failed = ssh.run_settled("systemctl --failed --no-legend --plain", timeout=30).stdout.split()
        units = [word for word in failed if "." in word and not word.startswith("loaded")]
        message = f"{state}; failed units: {', '.join(units) or 'none'}"
        if state == "degraded" and allow_degraded:
            message += " (allowed by boot.allow_degraded)"
    return CheckResult(name="system running", kind="boot", passed=passed, message=message)


def _last_lines(out: ProbeOutput, prefix: str) -> str:
    tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
    return prefix + (": " + " | ".join(tail) if tail else "")


def batch_script(probes: list[Probe], concurrency: int = PROBE_CONCURRENCY) -> str:
    """One POSIX sh script running every probe, `concurrency` at a time (as goss does: probes are reads of the
    guest's state, so their order does not matter, and a TCG guest's vCPUs run them side by side). Each probe's
    stdout, stderr and exit status land in files N.o, N.e, N.rc, sent back as one tar: one process for the
    whole framing, where counting bytes per probe cost three (each tens of ms under TCG), and no output
    (binary, or text that looks like a separator) can confuse the parser."""
    lines = ["set +e",
             "command -v tar >/dev/null || { echo 'the guest has no tar (the probes need it)' >&2; exit 91; }",
             'd=$(mktemp -d) || exit 90', "trap 'rm -rf \"$d\"' EXIT"]
    for index, probe in enumerate(probes):
        lines.append(f"( ( {probe.script}\n) </dev/null >\"$d/{index}.o\" 2>\"$d/{index}.e\"; "
                     f"echo $? >\"$d/{index}.rc\" ) &")
        if (index + 1) % concurrency == 0:
            lines.append("wait")
    lines += ["wait", 'cd "$d" && tar -cf - .']
    return "\n".join(lines) + "\n"


def parse_batch(data: bytes, count: int) -> dict[int, ProbeOutput]:
    """Inverse of batch_script: the guest's tar is untrusted, so only regular members named N.o, N.e, N.rc for
    N below `count` are read, an exit status must be a number, and whatever is missing, malformed or cut off
    is simply absent from the result."""
    wanted = {f"{index}.{part}" for index in range(count) for part in ("o", "e", "rc")}
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isreg() and name in wanted:
                    handle = tar.extractfile(member)
                    files[name] = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError, OSError):
        pass  # cut off: keep the members read whole before the damage
    results: dict[int, ProbeOutput] = {}
    for index in range(count):
        status = files.get(f"{index}.rc", b"").strip()
        if not status.isdigit():
            continue
        results[index] = ProbeOutput(int(status), files.get(f"{index}.o", b"").decode(errors="replace"),
                                     files.get(f"{index}.e", b"").decode(errors="replace"))
    return results


def run_probes(ssh: Ssh, probes: list[Probe], timeout: float) -> list[CheckResult]:
    """Run every probe in one SSH session and judge each on the host."""
    if not probes:
        return []
    script = batch_script(probes).encode()
    try:
        proc = settled(lambda left: run(ssh.argv("sh -s"), check=False, timeout=left, input_bytes=script),
                       lambda done: connection_lost(done.returncode, done.stdout, done.stderr), timeout)
    except subprocess.TimeoutExpired as exc:
        raise BootError(f"the guest checks did not finish within {timeout:.0f}s",
                        resolution="a command check probably hangs; give it a `timeout:`") from exc
    outputs = parse_batch(proc.stdout, len(probes))
    stderr = proc.stderr.decode(errors="replace")
    results = []
    for index, probe in enumerate(probes):
        if index in outputs:
            results.append(probe.result(outputs[index]))
        else:
            results.append(CheckResult(name=probe.name, kind=probe.kind, passed=False,
                                       message=f"no result (ssh exit {proc.returncode}: {stderr.strip()[-200:]})"))
    return results
