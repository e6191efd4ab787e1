"""One real build of debian-12 (every format, boot-tested) shared by every e2e test; the build helpers."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, cli, once_per_run

ALL_FORMATS = ("raw", "qcow2", "vmdk", "vhd", "gce", "ova", "kubevirt")


@dataclass(frozen=True)
class Built:
    out: Path
    cache: Path
    manifest: dict[str, Any]
    stderr: str
    seconds: float

    def output(self, fmt: str) -> Path:
        for item in self.manifest["outputs"]:
            if item["format"] == fmt:
                return self.out / item["path"]
        raise KeyError(fmt)


def build(image: str, out: Path, cache: Path, *extra: str) -> Built:
    return build_formats(image, out, cache, ALL_FORMATS, *extra)


def build_formats(image: str, out: Path, cache: Path, formats: tuple[str, ...], *extra: str) -> Built:
    args = ["build", image, "--output", str(out), "--cache-dir", str(cache)]
    for fmt in formats:
        args += ["--format", fmt]
    started = time.monotonic()
    proc = cli(*args, *extra)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, f"build failed:\n{proc.stderr[-4000:]}"
    manifest = json.loads((out / "manifest.json").read_text())
    return Built(out, cache, manifest, proc.stderr, seconds)


def built_once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Built]) -> Built:
    """`make(out)` run by the first worker of the run that asks; every other worker gets that same build
    (its out/ read in place) instead of building and booting the image again."""
    with once_per_run(factory, name) as where:
        record = where / "built.json"
        if record.is_file():
            fields = json.loads(record.read_text())
            return Built(Path(fields["out"]), Path(fields["cache"]), fields["manifest"], fields["stderr"],
                         fields["seconds"])
        built = make(where / "out")
        fields = {"out": str(built.out), "cache": str(built.cache), "manifest": built.manifest,
                  "stderr": built.stderr, "seconds": built.seconds}
        record.with_suffix(".part").write_text(json.dumps(fields))
        record.with_suffix(".part").rename(record)
        return built


@pytest.fixture(scope="session")
def debian12(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Built:
    return built_once(tmp_path_factory, "debian-12", lambda out: build("debian-12", out, shared_cache))


@pytest.fixture(scope="session")
def debian13(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Built:
    """debian-13 built from its lock and boot-tested under BIOS and UEFI (raw only): the reference later
    e2e modules compare their rebuilds with."""
    return built_once(tmp_path_factory, "debian-13",
                      lambda out: build_formats("debian-13", out, shared_cache, ("raw",)))


def copy_store(cache: Path, fresh: Path) -> None:
    """Hard links of the package store only (no base, no phase entries): files in it are never modified."""
    for src in (cache / "packages").rglob("*"):
        dest = fresh / "packages" / src.relative_to(cache / "packages")
        if src.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif not src.name.startswith("."):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dest)


def rebuild_elsewhere(built: Built, image: str, workdir: Path, phases: str, formats: tuple[str, ...]) -> dict[str, Any]:
    """IMAGE built again cold in another directory from `built`'s effective lock, with only its package store
    (no base, no phase entries: --no-cache --locked); that build's manifest."""
    context = workdir / image
    shutil.copytree(REPO / "Containerfiles" / image, context)
    shutil.copyfile(built.out / f"{image}.lock.json", context / "image.lock.json")
    copy_store(built.cache, workdir / "fresh-cache")
    args = ["build", str(context), "--phases", phases, "--no-cache", "--no-boot-test", "--locked"]
    for fmt in formats:
        args += ["--format", fmt]
    proc = cli(*args, "--cache-dir", str(workdir / "fresh-cache"), "--output", str(workdir / "out"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((workdir / "out" / "manifest.json").read_text())  # type: ignore[no-any-return]
