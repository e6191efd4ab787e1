"""SSH to the guest: a connection that sshd resets (cloud-init restarts it after first boot) is retried, a
failing remote command is not."""

from __future__ import annotations

import subprocess
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
    answers = [ProbeOutput(255, "", RESET), ProbeOutput(255, "", RESET),
               ProbeOutput(0, "status: done\n", "")]
    monkeypatch.setattr(guest.Ssh, "run", lambda self, remote, **kw: answers.pop(0))
    result = guest.wait_cloud_init(ssh, timeout=30)
    assert result.passed and result.message == "status done" and not answers


def test_a_failing_command_is_not_retried(ssh: guest.Ssh, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def run(self: guest.Ssh, remote: str, **kw: Any) -> ProbeOutput:
        calls.append(remote)
        return ProbeOutput(1, "status: error\n", "")

    monkeypatch.setattr(guest.Ssh, "run", run)
    assert not guest.wait_cloud_init(ssh, timeout=30).passed
    assert len(calls) == 1


def test_retries_stop_at_the_timeout(ssh: guest.Ssh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest.Ssh, "run", lambda self, remote, **kw: ProbeOutput(255, "", RESET))
    monkeypatch.setattr(guest, "POLL_INTERVAL", 0.05)
    out = ssh.run_settled("true", timeout=0.3)
    assert out.exit_status == 255 and "Connection reset" in out.stderr


def test_probe_batch_is_sent_again_after_a_reset(ssh: guest.Ssh, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe("command hello", "command", "echo hello", lambda out: (out.stdout == "hello\n", "judged"))
    framed = b"@@probe 0 0 6 0\nhello\n"
    answers = [subprocess.CompletedProcess([], 255, b"", RESET.encode()),
               subprocess.CompletedProcess([], 0, framed, b"")]
    monkeypatch.setattr(guest, "run", lambda argv, **kw: answers.pop(0))
    [result] = guest.run_probes(ssh, [probe], timeout=30)
    assert result.passed and not answers
