"""Same pinned inputs, cleared caches (ours and the engine's), another time and working directory ->
the same bits for the rootfs tar, the raw disk and the qcow2."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Built
from tests.helpers import cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rebuilt(debian12: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    workdir = tmp_path_factory.mktemp("elsewhere")
    proc = cli("build", "debian-12", "--phases", "rootfs,disk,convert", "--no-cache", "--no-boot-test",
               "--format", "raw", "--format", "qcow2",
               "--cache-dir", str(workdir / "fresh-cache"), "--output", str(workdir / "out"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield json.loads((workdir / "out" / "manifest.json").read_text())
    shutil.rmtree(workdir)  # ~5 GiB of cache and outputs; the manifest's digests are all the tests need


def _sha(manifest: dict, fmt: str) -> str:  # type: ignore[type-arg]
    return next(o["sha256"] for o in manifest["outputs"] if o["format"] == fmt)


def test_rootfs_tar_is_bit_identical(debian12: Built, rebuilt: dict) -> None:  # type: ignore[type-arg]
    assert rebuilt["rootfs"]["sha256"] == debian12.manifest["rootfs"]["sha256"]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_disk_outputs_are_bit_identical(debian12: Built, rebuilt: dict, fmt: str) -> None:  # type: ignore[type-arg]
    assert _sha(rebuilt, fmt) == _sha(debian12.manifest, fmt)


def test_only_the_engine_digests_are_listed_as_nondeterministic(rebuilt: dict) -> None:  # type: ignore[type-arg]
    assert [note.split(":")[0] for note in rebuilt["nondeterministic"]] == ["oci"]
