"""The disk layout as data: validation, overrides, derived ids, sizes and alignment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from assembler.disk.layout import (
    DEFAULT_LAYOUT,
    GPT_HEAD,
    GPT_TAIL,
    MiB,
    align_up,
    choose_root_size,
    derive_fat_serial,
    derive_uuid,
    disk_size_for,
    fat_uuid,
    layout_from_dict,
    layout_path,
    load_layout,
    plan_partitions,
    root_fs_minimum,
)
from assembler.errors import ConfigError, DiskError


def _base() -> dict[str, Any]:
    return {
        "table": "gpt",
        "firmware": ["bios", "uefi"],
        "partitions": [
            {"role": "bios_boot", "size": "1MiB"},
            {"role": "esp", "size": "64MiB", "fs": "vfat"},
            {"role": "root", "fs": "ext4"},
        ],
    }


def test_default_layout_loads() -> None:
    layout = load_layout()
    assert [p.role for p in layout.partitions] == ["bios_boot", "esp", "root"]
    assert layout.firmware == ("bios", "uefi")
    esp = layout.partition("esp")
    assert esp is not None and esp.size == 64 * MiB
    assert "orphan_file" not in layout.root.features  # older guests' e2fsck cannot read it


def test_layout_is_frozen() -> None:
    layout = load_layout()
    with pytest.raises(ValidationError, match="frozen"):
        layout.table = "gpt"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(table="mbr"), "table"),
        (lambda d: d.update(extra_key=1), "extra"),
        (lambda d: d["partitions"].pop(2), "root partition"),
        (lambda d: d["partitions"].pop(0), "bios_boot"),
        (lambda d: d["partitions"].pop(1), "esp partition"),
        (lambda d: d["partitions"].append({"role": "esp", "size": "64MiB"}), "repeated: esp"),
        (lambda d: d["partitions"][1].update(size="1000KiB"), "multiple of 1 MiB"),
        (lambda d: d["partitions"][1].update(size="16MiB"), "at least 33 MiB"),
        (lambda d: d["partitions"][1].update(fs="ext4"), "must have fs 'vfat'"),
        (lambda d: d["partitions"][0].pop("size"), "needs a size"),
        (lambda d: d.update(firmware=[]), "at least one"),
        (lambda d: d.update(firmware=["bios", "bios"]), "twice"),
        (lambda d: d.update(firmware=["coreboot"]), "firmware"),
        (lambda d: d["partitions"][1].update(size="lots"), "invalid size"),
        (lambda d: d["partitions"].insert(0, d["partitions"].pop(2)), "must be the last"),
    ],
)
def test_invalid_layouts_name_the_problem(change: Any, message: str) -> None:
    data = _base()
    change(data)
    with pytest.raises(ConfigError) as err:
        layout_from_dict(data)
    assert message in err.value.details
    assert err.value.resolution


def test_uefi_only_layout_needs_no_bios_boot() -> None:
    data = _base()
    data["partitions"].pop(0)
    data["firmware"] = ["uefi"]
    assert [p.role for p in layout_from_dict(data).partitions] == ["esp", "root"]


def test_overrides_merge_partitions_by_role(tmp_path: Path) -> None:
    overrides = {"partitions": [{"role": "esp", "size": "128MiB"}], "root": {"label": "r"}}
    layout = load_layout(overrides=overrides)
    assert layout.partition("esp").size == 128 * MiB  # type: ignore[union-attr]
    assert layout.partition("bios_boot").size == MiB  # type: ignore[union-attr]
    assert layout.root.label == "r"
    assert layout.root.mount_options == "errors=remount-ro"  # untouched keys survive


def test_override_can_remove_a_partition() -> None:
    overrides = {"firmware": ["uefi"], "partitions": [{"role": "bios_boot", "remove": True}]}
    layout = load_layout(overrides=overrides)
    assert [p.role for p in layout.partitions] == ["esp", "root"]


def test_invalid_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid disk layout"):
        load_layout(overrides={"partitions": [{"role": "esp", "size": "7MiB"}]})


def test_unreadable_layout_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("table: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read disk layout"):
        load_layout(bad)


def test_layout_path_by_name_or_path(tmp_path: Path) -> None:
    assert layout_path("gpt-bios-uefi") == DEFAULT_LAYOUT
    assert layout_path("gpt-bios-uefi.yaml") == DEFAULT_LAYOUT
    own = tmp_path / "mine.yaml"
    own.write_text("{}")
    assert layout_path(str(own)) == own
    with pytest.raises(ConfigError) as err:
        layout_path("nope")
    assert "gpt-bios-uefi" in err.value.details


def test_derived_ids_are_stable_and_distinct() -> None:
    a = derive_uuid("sha256:abc", "root", "fs-uuid")
    assert a == derive_uuid("sha256:abc", "root", "fs-uuid")
    assert str(a) == "78776d7a-ff9e-5971-80b9-233578beaaeb"  # pinned: a change would change every disk
    assert a != derive_uuid("sha256:abd", "root", "fs-uuid")
    assert a != derive_uuid("sha256:abc", "esp", "fs-uuid")
    assert a != derive_uuid("sha256:abc", "root", "partuuid")
    assert a.version == 5


def test_fat_serial_form() -> None:
    serial = derive_fat_serial("sha256:abc")
    assert len(serial) == 8 and serial == serial.upper()
    int(serial, 16)
    assert fat_uuid(serial) == f"{serial[:4]}-{serial[4:]}"


def test_sizes_are_mib_aligned_and_back_to_back() -> None:
    layout = load_layout()
    root = choose_root_size(layout, 700 * 10**6, size=None, headroom=512 * MiB)
    assert root % MiB == 0
    assert root >= 700 * 10**6 * layout.root.size_factor + 512 * MiB
    planned = plan_partitions(layout, root)
    assert [p.start for p in planned] == [GPT_HEAD, 2 * MiB, 66 * MiB]
    assert all(p.start % MiB == 0 and p.size % MiB == 0 for p in planned)
    assert planned[-1].size == root
    total = disk_size_for(layout, root)
    assert total == planned[-1].start + root + GPT_TAIL
    assert total % MiB == 0


def test_fixed_size_gives_root_the_rest() -> None:
    layout = load_layout()
    root = choose_root_size(layout, 100 * MiB, size=2048 * MiB, headroom=512 * MiB)
    assert root == 2048 * MiB - GPT_HEAD - GPT_TAIL - 65 * MiB


def test_fixed_size_too_small_names_the_needed_size() -> None:
    layout = load_layout()
    with pytest.raises(DiskError) as err:
        choose_root_size(layout, 800 * MiB, size=512 * MiB, headroom=0)
    needed = disk_size_for(layout, root_fs_minimum(800 * MiB, layout)) // MiB
    assert f"{needed}MiB" in err.value.resolution
    assert "does not fit" in err.value.brief


def test_fixed_size_must_be_aligned() -> None:
    with pytest.raises(DiskError, match="multiple of 1 MiB"):
        choose_root_size(load_layout(), MiB, size=1000 * MiB + 1, headroom=0)


def test_fixed_root_partition_size_is_checked() -> None:
    layout = load_layout(overrides={"partitions": [{"role": "root", "size": "64MiB"}]})
    with pytest.raises(DiskError, match="too small"):
        choose_root_size(layout, 500 * MiB, size=None, headroom=0)


def test_align_up() -> None:
    assert align_up(0) == 0
    assert align_up(1) == MiB
    assert align_up(MiB) == MiB
    assert align_up(MiB + 1) == 2 * MiB
