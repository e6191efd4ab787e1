from __future__ import annotations

from pathlib import Path

import pytest

from assembler.config import list_images, resolve_image
from assembler.errors import ConfigError


def test_default_image_is_listed() -> None:
    assert "debian-12" in list_images()


def test_resolve_by_name_reads_image_yaml() -> None:
    spec = resolve_image("debian-12")
    assert spec.containerfile.name == "Containerfile"
    assert spec.config.base == "debian-12"


def test_unknown_image_names_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_image("no-such-image")
    assert "debian-12" in err.value.resolution


def test_directory_without_containerfile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Containerfile"):
        resolve_image(str(tmp_path))


def test_bad_image_yaml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    (tmp_path / "image.yaml").write_text("formats: [raw]\nunknown_key: 1\n")
    with pytest.raises(ConfigError, match="invalid image config"):
        resolve_image(str(tmp_path))


def test_image_yaml_layout_overrides_reach_the_disk_layout(tmp_path: Path) -> None:
    from assembler.phases.disk import layout_for

    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    (tmp_path / "image.yaml").write_text(
        "disk:\n  layout_overrides:\n    partitions: [{role: esp, size: 256MiB}]\n")
    disk = resolve_image(str(tmp_path)).config.disk
    layout = layout_for(disk.layout, dict(disk.layout_overrides))
    assert {p.role: p.size for p in layout.partitions}["esp"] == 256 << 20


def test_boot_disk_buses_default_to_virtio_and_reject_unknown_ones(tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    assert resolve_image(str(tmp_path)).config.boot.disk_buses == ["virtio"]
    (tmp_path / "image.yaml").write_text("boot: {disk_buses: [nvme, pvscsi]}\n")
    assert resolve_image(str(tmp_path)).config.boot.disk_buses == ["nvme", "pvscsi"]
    (tmp_path / "image.yaml").write_text("boot: {disk_buses: [floppy]}\n")
    with pytest.raises(ConfigError, match="invalid image config"):
        resolve_image(str(tmp_path))


def test_relative_image_directory_resolves_to_absolute_paths(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from assembler.inputs import build_inputs

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "Containerfile").write_text("FROM scratch\n")
    monkeypatch.chdir(tmp_path)
    spec = resolve_image("img")
    assert spec == resolve_image(str(tmp_path / "img"))
    assert spec.containerfile == tmp_path / "img" / "Containerfile" and spec.containerfile.is_absolute()
    assert build_inputs(spec)  # relates the Containerfile to the context: failed on relative paths
