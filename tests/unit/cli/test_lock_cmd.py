"""`assembler lock`: a lock whose every file can still be served is kept as it is (no resolve, no engine);
an image without a base recipe has nothing to lock."""

from __future__ import annotations

import json
from pathlib import Path

from assembler.packages.lockfile import LOCK_FILE
from tests.unit.cli.invoke import error_of, run
from tests.unit.cli.lockedimage import locked_image


def test_a_complete_lock_is_current_and_untouched(tmp_path: Path) -> None:
    image = locked_image(tmp_path)
    before = (image.dir / LOCK_FILE).read_bytes()
    result = run("lock", str(image.dir), "--cache-dir", str(image.cache), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"lock": str(image.dir / LOCK_FILE), "state": "current", "packages": 1,
                                         "changes": []}
    assert "current (1 packages, every file available)" in " ".join(result.stderr.split())
    assert (image.dir / LOCK_FILE).read_bytes() == before


def test_without_json_stdout_stays_empty(tmp_path: Path) -> None:
    image = locked_image(tmp_path)
    result = run("lock", str(image.dir), "--cache-dir", str(image.cache))
    assert (result.exit_code, result.stdout) == (0, "")


def test_an_image_without_a_base_recipe_has_nothing_to_lock(tmp_path: Path) -> None:
    image = tmp_path / "plain"
    image.mkdir()
    (image / "Containerfile").write_text("FROM docker.io/library/debian:13\n")
    error = error_of(run("lock", str(image), "--cache-dir", str(tmp_path / "cache")))
    assert error.brief == "plain has no `base:` recipe: its packages come from its own base image"
    assert "snapshot" in error.resolution
    assert not (image / LOCK_FILE).exists()
