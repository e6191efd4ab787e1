"""The disk phase's key covers what its embedded BOM carries: the whole build context."""

from __future__ import annotations

import shutil
from pathlib import Path

from assembler.config import resolve_image
from assembler.phases.disk import DiskPhase
from assembler.phases.rootfs import RootfsPhase
from assembler.pipeline import BuildRun
from assembler.store import Store
from tests.helpers import REPO


def _materials(context: Path, tmp_path: Path) -> tuple[dict, dict]:  # type: ignore[type-arg]
    spec = resolve_image(str(context))
    ctx = BuildRun(spec=spec, store=Store(tmp_path / "cache"), output_dir=tmp_path / "out", formats=["raw"])
    rootfs = RootfsPhase(ctx)
    return rootfs.material(), DiskPhase(ctx, (rootfs,)).material()


def test_an_edit_of_checks_yaml_changes_the_disk_key_not_the_rootfs_key(tmp_path: Path) -> None:
    image = tmp_path / "debian-13"
    shutil.copytree(REPO / "Containerfiles" / "debian-13", image)
    rootfs_before, disk_before = _materials(image, tmp_path)
    with (image / "checks.yaml").open("a") as handle:
        handle.write("# an edit\n")
    rootfs_after, disk_after = _materials(image, tmp_path)
    assert rootfs_before == rootfs_after  # the engine build does not see checks.yaml
    assert disk_before != disk_after  # the embedded BOM does


def test_an_edit_of_a_format_profile_changes_that_conversions_key(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import assembler.formats as formats
    from assembler.phases.convert import ConvertPhase

    profiles = tmp_path / "formats"
    shutil.copytree(REPO / "formats", profiles)
    monkeypatch.setattr(formats, "formats_dir", lambda: profiles)
    ctx = BuildRun(spec=resolve_image("debian-13"), store=Store(tmp_path / "cache"), output_dir=tmp_path / "o",
                       formats=["ova", "qcow2"])
    rootfs = RootfsPhase(ctx)
    disk = DiskPhase(ctx, (rootfs,))

    def keys() -> dict[str, str]:
        return {fmt: ConvertPhase(ctx, (disk,), fmt).key() for fmt in ("ova", "qcow2")}

    before = keys()
    ova = profiles / "ova.yaml"
    ova.write_text(ova.read_text().replace("cpus: 2", "cpus: 8"))
    after = keys()
    assert before["ova"] != after["ova"]  # the OVA declares 8 CPUs now: the cached one is stale
    assert before["qcow2"] == after["qcow2"]
