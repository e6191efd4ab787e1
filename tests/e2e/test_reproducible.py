"""Same lock, cleared caches (ours and the engine's), another time and working directory -> the same bits
for the base, the rootfs tar, the raw disk and the qcow2.

The second build replays the first build's effective lock (`out/debian-12/debian-12.lock.json`) with
`--locked`, from a cache that holds nothing but the package store (every .deb and signed index the first
build fetched, by sha256): the base is bootstrapped again from scratch, the engine builds without cache.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Built, rebuild_elsewhere
from tests.helpers import scratch_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rebuilt(debian12: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    with scratch_dir(tmp_path_factory, "elsewhere") as workdir:
        yield rebuild_elsewhere(debian12, "debian-12", workdir, "rootfs,disk,convert", ("raw", "qcow2"))


def test_the_lock_was_replayed_not_resolved(debian12: Built, rebuilt: dict) -> None:  # type: ignore[type-arg]
    assert rebuilt["lock"]["replayed"] is True and rebuilt["lock"]["changes"] == []
    assert rebuilt["lock"]["sha256"] == debian12.manifest["lock"]["sha256"]
    assert rebuilt["base_image"] == debian12.manifest["base_image"]  # the bootstrapped base, bit for bit


def _sha(manifest: dict, fmt: str) -> str:  # type: ignore[type-arg]
    return next(o["sha256"] for o in manifest["outputs"] if o["format"] == fmt)


def test_rootfs_tar_is_bit_identical(debian12: Built, rebuilt: dict) -> None:  # type: ignore[type-arg]
    assert rebuilt["rootfs"]["sha256"] == debian12.manifest["rootfs"]["sha256"]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_disk_outputs_are_bit_identical(debian12: Built, rebuilt: dict, fmt: str) -> None:  # type: ignore[type-arg]
    assert _sha(rebuilt, fmt) == _sha(debian12.manifest, fmt)


def test_only_the_engine_digests_are_listed_as_nondeterministic(rebuilt: dict) -> None:  # type: ignore[type-arg]
    assert [note.split(":")[0] for note in rebuilt["nondeterministic"]] == ["oci"]
