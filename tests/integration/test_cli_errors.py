"""Bad input: one clear error, exit status 1, nothing half-written in out/ or the cache."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.helpers import cli

pytestmark = pytest.mark.integration


def objects(cache: Path) -> list[Path]:
    root = cache / "objects"
    return sorted(root.glob("*/*")) if root.exists() else []


def test_missing_containerfile(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    proc = cli("build", str(context), "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"))
    assert proc.returncode == 1
    assert "no Containerfile" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_image_lists_the_known_ones(tmp_path: Path) -> None:
    proc = cli("build", "no-such-image", "--output", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "debian-12" in proc.stderr


def test_engine_down_says_how_to_start_one(tmp_path: Path) -> None:
    dead = f"unix://{tmp_path}/nothing.sock"
    proc = cli("build", "debian-12", "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
               env={"DOCKER_HOST": dead})
    assert proc.returncode == 1
    assert "engine" in proc.stderr.lower() and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert objects(tmp_path / "c") == []


def test_dry_run_needs_no_engine(tmp_path: Path) -> None:
    proc = cli("build", "debian-12", "--dry-run", "--json", "--cache-dir", str(tmp_path / "c"),
               env={"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"})
    assert proc.returncode == 0, proc.stderr
    assert '"action": "run"' in proc.stdout and '"reason": "not built before"' in proc.stdout


def test_failing_run_step(tmp_path: Path, shared_cache: Path) -> None:
    context = tmp_path / "failing"
    context.mkdir()
    (context / "Containerfile").write_text(
        "FROM localhost/assembler/base:debian-12\nRUN echo preparing > /etc/prepared\n"
        "RUN echo about to fail && exit 3\n")
    (context / "image.yaml").write_text("base: debian-12\n")
    before = objects(shared_cache)
    proc = cli("build", str(context), "--output", str(tmp_path / "out"), "--cache-dir", str(shared_cache),
               "--no-boot-test")
    assert proc.returncode == 1
    assert "exit 3" in proc.stderr or "returned a non-zero code: 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert [p for p in objects(shared_cache) if p not in before] == []


def test_ubuntu_k8s_offline_fails_fast_naming_what_and_how(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"urls:\n  https://dl.k8s.io/: http://{dead}/k8s/\n  https://github.com/: http://{dead}/gh/\n"
                       f"  http://snapshot.ubuntu.com/ubuntu: http://{dead}/ubuntu\n"
                       f"registries:\n  docker.io/: {dead}/hub/\n")
    started = time.monotonic()
    proc = cli("build", "ubuntu-k8s-1.30", "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
               env={"ASSEMBLER_MIRRORS": str(mirrors)})
    assert proc.returncode == 1
    assert time.monotonic() - started < 30
    assert "cannot reach" in proc.stderr and "/k8s/release/v1.30.14" in proc.stderr
    assert "ASSEMBLER_MIRRORS" in proc.stderr
    assert not (tmp_path / "out").exists()
