"""SSH to the guest: a connection that sshd resets (cloud-init restarts it after first boot) is retried, a
failing remote command is not."""

from __future__ import annotations

import io
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from assembler.boot import guest
from assembler.boot.checks import Probe, ProbeOutput

RESET = "kex_exchange_identification: read: Connection reset by peer\n"


@pytest.fixture
def ssh(monkeypatch: pytest.MonkeyPatch) -> guest.Ssh:
    monkeypatch.setattr(guest, "POLL_INTERVAL", 0.0)
    return guest.Ssh(port=2222, key=Path("/nonexistent/key"))


def test_transport_failures_are_told_from_command_failures() -> None:
    assert guest.transport_failed(255, RESET)
    assert not guest.transport_failed(1, RESET)
    assert not guest.transport_failed(255, "sh: 1: frobnicate: not found\n")


def test_settle_waits_retry_while_sshd_restarts(ssh: guest.Ssh, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [ProbeOutput(255, "", RESET), ProbeOutput(255, "", RESET), ProbeOutput(0, "running\n", "")]
    monkeypatch.setattr(guest.Ssh, "run", lambda self, remote, **kw: answers.pop(0))
    result = guest.wait_system_running(ssh, timeout=30, allow_degraded=False)
    assert result.passed and result.message == "running" and not answers


def test_a_failing_command_is_not_retried(ssh: guest.Ssh, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def run(self: guest.Ssh, remote: str, **kw: Any) -> ProbeOutput:
        calls.append(remote)
        return ProbeOutput(1, "starting\n", "") if "is-system-running" in remote else ProbeOutput(0, "", "")

    monkeypatch.setattr(guest.Ssh, "run", run)
    assert not guest.wait_system_running(ssh, timeout=30, allow_degraded=False).passed
    assert calls[0] == "systemctl is-system-running --wait" and calls.count(calls[0]) == 1


def test_cloud_init_must_report_done() -> None:
    probe = guest.cloud_init_probe(180)
    assert "/run/cloud-init/result.json" in probe.script and probe.kind == "boot"
    done = probe.result(ProbeOutput(0, '{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vdb]", "errors": []}}', ""))
    assert done.passed and done.message.startswith("status done (datasource DataSourceNoCloud")
    failed = probe.result(ProbeOutput(0, '{"v1": {"datasource": null, "errors": ["no seed"]}}', ""))
    assert not failed.passed and failed.message == "status error: no seed"
    degraded = probe.result(ProbeOutput(0, '{"v1": {"errors": [], "recoverable_errors": {"WARNING": ["x"]}}}', ""))
    assert not degraded.passed and degraded.message.startswith("status degraded done")
    for garbage in ("", "{", '["v1"]', '{"v1": 3}'):  # the guest's file is untrusted
        assert not probe.result(ProbeOutput(0, garbage, "")).passed
    assert "did not finish" in probe.result(ProbeOutput(1, "", "")).message


def test_the_cloud_init_wait_runs_in_a_real_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = tmp_path / "result.json"
    monkeypatch.setattr(guest, "CLOUD_INIT_RESULT", str(result))
    waiting = subprocess.Popen(["sh", "-c", guest.cloud_init_probe(5).script], stdout=subprocess.PIPE)
    time.sleep(0.3)
    result.write_text('{"v1": {"errors": []}}')  # cloud-final writes it while the probe waits
    stdout, _ = waiting.communicate(timeout=10)
    assert waiting.returncode == 0 and stdout == b'{"v1": {"errors": []}}'


def test_retries_stop_at_the_timeout(ssh: guest.Ssh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest.Ssh, "run", lambda self, remote, **kw: ProbeOutput(255, "", RESET))
    monkeypatch.setattr(guest, "POLL_INTERVAL", 0.05)
    out = ssh.run_settled("true", timeout=0.3)
    assert out.exit_status == 255 and "Connection reset" in out.stderr


def test_probe_batch_is_sent_again_after_a_reset(ssh: guest.Ssh, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe("command hello", "command", "echo hello", lambda out: (out.stdout == "hello\n", "judged"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("./0.o", b"hello\n"), ("./0.e", b""), ("./0.rc", b"0\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    framed = buffer.getvalue()
    answers = [subprocess.CompletedProcess([], 255, b"", RESET.encode()),
               subprocess.CompletedProcess([], 0, framed, b"")]
    monkeypatch.setattr(guest, "run", lambda argv, **kw: answers.pop(0))
    [result] = guest.run_probes(ssh, [probe], timeout=30)
    assert result.passed and not answers


def _serve_once(reply: bytes) -> tuple[int, threading.Thread]:
    """A local port that accepts one connection, sends `reply` (nothing: hangs up at once) and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def test_the_banner_tells_a_listening_sshd_from_a_port_that_hangs_up() -> None:
    port, served = _serve_once(b"SSH-2.0-OpenSSH_10.0\r\n")
    assert guest.Ssh(port=port, key=Path("k")).banner()
    served.join(5)
    port, served = _serve_once(b"")  # QEMU's forwarder when nothing listens in the guest: accept, then close
    assert not guest.Ssh(port=port, key=Path("k")).banner()
    served.join(5)
    with socket.create_server(("127.0.0.1", 0)) as unused:
        free = unused.getsockname()[1]
    assert not guest.Ssh(port=free, key=Path("k")).banner()


def test_wait_for_ssh_logs_in_only_once_the_banner_is_there(ssh: guest.Ssh,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    banners = [False, False, True]
    logins: list[str] = []
    monkeypatch.setattr(guest, "BANNER_POLL", 0.0)
    monkeypatch.setattr(guest, "require_tool", lambda *a: None)
    monkeypatch.setattr(guest.Ssh, "banner", lambda self: banners.pop(0))
    monkeypatch.setattr(guest.Ssh, "login", lambda self, **kw: logins.append("true") or ProbeOutput(0, "", ""))
    guest.wait_for_ssh(ssh, time.monotonic() + 30, lambda: None)
    assert logins == ["true"] and not banners


def test_sessions_after_the_login_share_its_connection(tmp_path: Path) -> None:
    ssh = guest.Ssh(port=2222, key=tmp_path / "key", control=tmp_path / "mux")
    master, session = ssh.argv("true", master=True), ssh.argv("sh -s")
    assert f"ControlPath={tmp_path / 'mux'}" in master and "ControlMaster=yes" in master
    assert any(opt.startswith("ControlPersist=") for opt in master)
    assert "ControlMaster=no" in session and not any(opt.startswith("ControlPersist=") for opt in session)
    assert not any(opt.startswith("Control") for opt in guest.Ssh(port=2222, key=tmp_path / "key").argv("true"))
