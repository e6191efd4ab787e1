"""`assembler rebuild`: what the options ask of the rebuild (it builds anew and verifies unless told
otherwise), its report as JSON, and a source that is not there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import assembler.rebuild as rebuild_mod
from tests.unit.cli.invoke import error_of, run


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The rebuilds asked for (a real one builds an image in the engine: tests/integration does that)."""
    made: list[dict[str, Any]] = []

    def rebuild(target: Path, **options: Any) -> dict[str, Any]:
        made.append({"target": target, **options})
        return {"image": "demo", "verified": options["verify"], "errors": []}

    monkeypatch.setattr(rebuild_mod, "rebuild", rebuild)
    return made


def test_by_default_everything_is_built_anew_booted_and_verified(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    bom = tmp_path / "demo.spdx.json"
    result = run("rebuild", str(bom))
    assert result.exit_code == 0, result.output
    assert calls == [{"target": bom, "output": None, "cache": None, "boot_test": True, "verify": True,
                      "nocache": True, "formats": None, "bundle": None, "offline": False}]
    assert result.stdout == ""


def test_every_option_reaches_the_rebuild(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    result = run("rebuild", str(tmp_path / "out"), "-o", str(tmp_path / "again"), "-f", "qcow2", "-f", "vmdk",
                 "--cache-dir", str(tmp_path / "c"), "--cache", "--no-boot-test", "--no-verify",
                 "--bundle", str(tmp_path / "b.tar"), "--offline", "--json")
    assert result.exit_code == 0, result.output
    assert calls == [{"target": tmp_path / "out", "output": tmp_path / "again", "cache": tmp_path / "c",
                      "boot_test": False, "verify": False, "nocache": False, "formats": ["qcow2", "vmdk"],
                      "bundle": tmp_path / "b.tar", "offline": True}]
    assert json.loads(result.stdout) == {"image": "demo", "verified": False, "errors": []}


def test_a_missing_source_is_one_error(tmp_path: Path) -> None:
    error = error_of(run("rebuild", str(tmp_path / "gone.spdx.json")))
    assert error.brief == f"no such file or directory: {tmp_path / 'gone.spdx.json'}"
    assert error.resolution == "pass out/IMAGE/IMAGE.spdx.json, out/IMAGE or a disk image"
