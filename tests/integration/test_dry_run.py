"""`build --dry-run` asks nothing of the network, and its keys are the ones the real build computes.

Every connect() the CLI and its children make is traced (strace): a dry run may talk to local sockets only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from assembler.build import plan_build
from assembler.config import resolve_image
from assembler.pipeline import BuildRun
from assembler.store import Store
from tests.helpers import REPO

pytestmark = pytest.mark.integration

IMAGES = ("debian-12", "debian-12-k8s-node")  # the second has optional downloads, probed by a real build
_INET = re.compile(r"connect\(\d+, \{sa_family=AF_INET6?\b")


def traced_dry_run(image: str, cache: Path, trace: Path, env: dict[str, str]) -> list[dict[str, str]]:
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), sys.executable, "-m",
         "assembler.cli.main", "build", image, "--dry-run", "--json", "--cache-dir", str(cache)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    inet = [line for line in trace.read_text().splitlines() if _INET.search(line)]
    assert inet == [], f"the dry run of {image} opened network connections:\n" + "\n".join(inet[:10])
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("image", IMAGES)
def test_a_dry_run_makes_no_network_request_and_predicts_the_keys(image: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Every download location mapped to a closed port on loopback: a real build's probe connects and is
    # refused (the downloads are gone); a dry run must not even try.
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text("urls:\n  'https://dl.k8s.io/': 'http://127.0.0.1:9/k8s/'\n"
                       "  'https://github.com/': 'http://127.0.0.1:9/github/'\n")
    env = {**os.environ, "ASSEMBLER_MIRRORS": str(mirrors)}
    cache = tmp_path / "cache"
    before = traced_dry_run(image, cache, tmp_path / "before.trace", env)
    assert [s["phase"] for s in before][:2] == ["rootfs", "disk"] and all(s["action"] == "run" for s in before)

    monkeypatch.setenv("ASSEMBLER_MIRRORS", str(mirrors))
    spec = resolve_image(image)
    ctx = BuildRun(spec=spec, store=Store(cache), output_dir=tmp_path / "out", formats=spec.config.formats)
    resolved = {s.phase.label: s.key for s in plan_build(ctx)}  # what `assembler build` plans: probes first
    after = traced_dry_run(image, cache, tmp_path / "after.trace", env)
    assert {s["phase"]: s["key"] for s in after} == resolved  # the probe's answer was recorded and reused
    optional = "k8s" in image
    assert ({s["phase"]: s["key"] for s in before} != resolved) is optional  # the downloads are gone
