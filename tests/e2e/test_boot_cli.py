"""`assembler boot` on the built image: a check that does not hold fails the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Built
from tests.helpers import cli

pytestmark = pytest.mark.e2e


def test_failing_check_fails_the_command(debian12: Built, tmp_path: Path) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "service:\n"
        "  ssh: {active: true}\n"
        "  nginx: {active: true, enabled: true}   # not installed in debian-12\n"
        "package:\n"
        "  nginx: {installed: true}\n"
    )
    qcow2 = debian12.output("qcow2")
    before = qcow2.stat().st_mtime_ns
    proc = cli("boot", str(qcow2), "--firmware", "bios", "--checks", str(checks), "--output", str(tmp_path))
    assert proc.returncode != 0
    assert "nginx" in proc.stderr and "FAIL" in proc.stderr
    assert (tmp_path / "junit.xml").read_text().count("<failure") >= 2
    assert (tmp_path / "console-bios.log").stat().st_size > 0
    assert qcow2.stat().st_mtime_ns == before  # booted through an overlay, never the artefact
