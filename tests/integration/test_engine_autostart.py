"""With nothing configured and no engine answering, assembler starts Debian's dockerd and says so."""

from __future__ import annotations

import logging
import subprocess
import time

import pytest

from assembler import engine
from assembler.errors import EngineError

# It stops dockerd: in the parallel part every other worker's builds would fail with it.
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]


def _docker_answers() -> bool:
    return subprocess.run(["docker", "version"], capture_output=True, check=False).returncode == 0


def _stop_dockerd() -> None:
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=False)
    deadline = time.monotonic() + 60
    while _docker_answers() and time.monotonic() < deadline:
        time.sleep(0.5)
    while subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, check=False).returncode == 0:
        if time.monotonic() > deadline:
            raise AssertionError("dockerd did not stop")
        time.sleep(0.5)


def test_connect_starts_dockerd_when_none_answers(caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    _stop_dockerd()
    with pytest.raises(EngineError) as err:
        engine.connect(start=False)
    assert "dockerd" in err.value.resolution
    try:
        with caplog.at_level(logging.INFO, logger="assembler"):
            client = engine.connect()
        assert client.ping()
        assert any("starting" in record.getMessage() for record in caplog.records)
    finally:
        if not _docker_answers():
            engine.connect()  # leave an engine running for the tests that follow
    assert _docker_answers()
