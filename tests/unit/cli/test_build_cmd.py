"""`assembler build`: the --dry-run plan (table or JSON) for a real image with an empty cache, the options that
shape it, and each bad input as one error with its fix, all before anything is built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from assembler.cli.build_cmd import _selected, registry_stores
from assembler.remote import RegistryStore
from tests.helpers import REPO
from tests.unit.cli.invoke import error_of, run


@pytest.fixture()
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of debian-13, and a mirror map of the test's own (the user's would name registry stores)."""
    copy = tmp_path / "debian-13"
    shutil.copytree(REPO / "Containerfiles" / "debian-13", copy)
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text("{}\n")
    monkeypatch.setenv("ASSEMBLER_MIRRORS", str(mirrors))
    monkeypatch.delenv("ASSEMBLER_CACHE_FROM", raising=False)
    monkeypatch.delenv("ASSEMBLER_CACHE_TO", raising=False)
    return copy


def _plan(image: Path, *args: str) -> list[dict[str, Any]]:
    cache = image.parent / "cache"
    result = run("build", str(image), "--dry-run", "--json", "--cache-dir", str(cache),
                 "-o", str(image.parent / "out"), *args)
    assert result.exit_code == 0, result.output
    plan: list[dict[str, Any]] = json.loads(result.stdout)
    return plan


def test_a_dry_run_prints_the_plan_as_json_and_writes_nothing(image: Path) -> None:
    plan = _plan(image)
    assert [(s["phase"], s["action"], s["reason"]) for s in plan] == [
        ("rootfs", "run", "not built before"), ("disk", "run", "not built before"),
        ("convert:qcow2", "run", "not built before"), ("boot", "run", "not built before"),
    ]  # the formats of its image.yaml: raw (the disk itself) and qcow2
    assert all(len(s["key"]) == 64 and set(s) == {"phase", "key", "action", "reason"} for s in plan)
    assert not (image.parent / "cache").exists() and not (image.parent / "out").exists()
    assert _plan(image) == plan  # the same inputs, the same keys


def test_a_dry_run_without_json_shows_the_plan_table(image: Path) -> None:
    result = run("build", str(image), "--dry-run", "--cache-dir", str(image.parent / "cache"))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    table = result.stderr
    assert "plan" in table and all(word in table for word in ("rootfs", "disk", "boot", "not built before"))
    keys = {s["key"][:12] for s in _plan(image)}
    assert keys <= set(table.split())


def test_formats_and_no_boot_test_shape_the_plan(image: Path) -> None:
    plan = _plan(image, "-f", "vmdk", "--format", "qcow2-compressed", "-f", "raw", "--no-boot-test")
    assert [s["phase"] for s in plan] == ["rootfs", "disk", "convert:vmdk", "convert:qcow2-compressed"]


def test_selected_phases_and_what_they_need(image: Path) -> None:
    plan = _plan(image, "--phases", "convert:qcow2")
    assert [(s["phase"], s["action"], s["reason"]) for s in plan] == [
        ("rootfs", "run", "not built before; needed by a selected phase"),
        ("disk", "run", "not built before; needed by a selected phase"),
        ("convert:qcow2", "run", "not built before"),
        ("boot", "skip", "not selected"),
    ]


def test_locked_and_size_change_the_keys_they_should(image: Path) -> None:
    plain = {s["phase"]: s["key"] for s in _plan(image)}
    locked = {s["phase"]: s["key"] for s in _plan(image, "--locked")}
    sized = {s["phase"]: s["key"] for s in _plan(image, "--size", "6G")}
    assert locked["rootfs"] != plain["rootfs"]  # --locked never reuses a build from a re-resolved lock
    assert sized["rootfs"] == plain["rootfs"] and sized["disk"] != plain["disk"]


@pytest.mark.parametrize(("args", "brief", "fix"), [
    (["--phases", "rootfs,publish"], "publish is not a build phase", "assembler publish IMAGE --provider"),
    (["--phases", "rootfs,pack,flash"], "unknown phase(s): flash, pack", "rootfs, disk, scan, convert, boot"),
    (["--phases", "scan"], "debian-13 has no scan phase", "add scan: {db: OSV-FILE} to its image.yaml"),
    (["-f", "qcow3"], "unknown format: qcow3", "qcow2"),
    (["--size", "-5G"], "invalid size: '-5G'", "e.g. 64MiB, 4G"),
    (["--offline", "--cache-from", "http://127.0.0.1:5000/a/phases"],
     "--offline fetches nothing: it cannot use a registry store", "drop --cache-from/--cache-to, or --offline"),
])
def test_bad_options_are_one_error_before_anything_runs(image: Path, args: list[str], brief: str,
                                                        fix: str) -> None:
    error = error_of(run("build", str(image), "--dry-run", "--cache-dir", str(image.parent / "cache"), *args))
    assert error.brief.startswith(brief)
    assert fix in error.resolution
    assert not (image.parent / "cache").exists()


def test_an_unknown_image(tmp_path: Path) -> None:
    error = error_of(run("build", "no-such-image", "--dry-run", "--cache-dir", str(tmp_path)))
    assert "no-such-image" in error.brief and error.resolution


def test_phase_selection() -> None:
    assert _selected(None) is None and _selected("") is None
    assert _selected(" rootfs, disk ,,convert:vmdk") == {"rootfs", "disk", "convert:vmdk"}


def test_registry_stores_come_from_the_options_then_the_mirror_map(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text("cache_from: http://mirror.internal:5000/team/phases\n")
    monkeypatch.setenv("ASSEMBLER_MIRRORS", str(mirrors))
    stores = registry_stores(None, "https://127.0.0.1:5000/mine/phases")
    assert isinstance(stores["cache_from"], RegistryStore) and isinstance(stores["cache_to"], RegistryStore)
    assert (stores["cache_from"].name, stores["cache_to"].name) == (
        "mirror.internal:5000/team/phases", "127.0.0.1:5000/mine/phases")
    assert registry_stores("http://a:1/x/y", None)["cache_from"].name == "a:1/x/y"  # the option wins
    assert registry_stores(None, None, offline=True) == {}  # offline: not even the mirror map's
