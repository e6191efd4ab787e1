"""The text and commands the disk is made of: fstab, grub configs, GPT argv, ESP directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from assembler.disk import assemble, esp, gpt, grub
from assembler.disk.layout import MiB, load_layout, plan_partitions
from assembler.errors import DiskError

ROOT = "2d0d5ad6-b2a3-5f8e-8a41-e63f33cfae56"


def test_fstab_mounts_root_and_esp_by_uuid() -> None:
    layout = load_layout()
    ids = assemble._ids("sha256:abc", layout)
    text = assemble.fstab(layout, ids)
    assert f"UUID={ids.root_uuid}\t/\text4\terrors=remount-ro\t0\t1" in text
    serial = ids.esp_serial
    assert f"UUID={serial[:4]}-{serial[4:]}\t/boot/efi\tvfat" in text


def test_fstab_without_esp() -> None:
    layout = load_layout(overrides={"firmware": ["bios"], "partitions": [{"role": "esp", "remove": True}]})
    text = assemble.fstab(layout, assemble._ids("s", layout))
    assert "/boot/efi" not in text


def test_ids_depend_on_the_seed_only() -> None:
    layout = load_layout()
    assert assemble._ids("a", layout) == assemble._ids("a", layout)
    assert assemble._ids("a", layout).root_uuid != assemble._ids("b", layout).root_uuid
    ids = assemble._ids("a", layout)
    assert len(set(ids.partuuids.values())) == 3
    assert ids.hash_seed != ids.root_uuid


def test_early_config_finds_root_by_uuid() -> None:
    text = grub.early_config(ROOT)
    assert f"search --no-floppy --fs-uuid --set=root {ROOT}" in text
    assert "configfile $prefix/grub.cfg" in text


def test_grub_cfg_boots_kernel_with_serial_console() -> None:
    text = grub.grub_cfg(root_uuid=ROOT, kernel_version="6.1.0-10-amd64", cmdline="console=ttyS0,115200n8")
    assert "linux /boot/vmlinuz-6.1.0-10-amd64 root=UUID=" + ROOT + " ro console=ttyS0,115200n8" in text
    assert "initrd /boot/initrd.img-6.1.0-10-amd64" in text
    assert "serial --unit=0 --speed=115200" in text
    assert "terminal_output console serial" in text


def test_grub_modules_skip_what_the_build_lacks(tmp_path: Path) -> None:
    for name in ("normal", "linux", "biosdisk"):
        (tmp_path / f"{name}.mod").write_bytes(b"")
    assert grub._modules(tmp_path, "i386-pc") == ["normal", "linux", "biosdisk"]


def test_gpt_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[list[str], bytes]] = []
    monkeypatch.setattr(gpt, "require_tool", lambda name: name)
    monkeypatch.setattr(gpt, "run", lambda cmd, **kw: seen.append((list(cmd), kw["input_bytes"])))
    planned = plan_partitions(load_layout(), 1024 * MiB)
    gpt.write_gpt(tmp_path / "d.raw", "DISK", [(p, f"G{p.number}", p.role) for p in reversed(planned)])
    [(argv, script)] = seen
    assert argv[0] == "sfdisk" and "--no-reread" in argv and argv[-1].endswith("d.raw")
    lines = script.decode().splitlines()
    assert lines[:5] == ["label: gpt", "label-id: DISK", "unit: sectors", "first-lba: 34", "sector-size: 512"]
    assert lines[5:] == [  # in number order whatever order they came in
        'start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, uuid=G1, name="bios_boot"',
        'start=4096, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=G2, name="esp"',
        'start=135168, size=2097152, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=G3, name="root"',
    ]


def test_gpt_refuses_quotes_in_names_and_gaps_in_numbers() -> None:
    planned = plan_partitions(load_layout(), 1024 * MiB)
    with pytest.raises(DiskError, match="quote"):
        gpt.gpt_script("DISK", [(p, "G", 'say "hi"') for p in planned])
    with pytest.raises(DiskError, match="without gaps"):
        gpt.gpt_script("DISK", [(p, "G", p.role) for p in planned[1:]])


def test_esp_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[list[str], Any]] = []
    monkeypatch.setattr(esp, "require_tool", lambda name: name)
    monkeypatch.setattr(esp, "run", lambda cmd, **kw: seen.append((list(cmd), kw.get("env"))))
    efi = tmp_path / "BOOTX64.EFI"
    esp.make_esp(tmp_path / "d.raw", 2 * MiB, 64 * MiB, serial="ABCD1234", label="esp", epoch=5,
                 files={"EFI/BOOT/BOOTX64.EFI": efi})
    mkfs = seen[0][0]
    # --invariant must come before -i, or it resets the volume id to 1234ABCD
    assert mkfs.index("--invariant") < mkfs.index("-i")
    assert mkfs[mkfs.index("-s") + 1] == "1" and mkfs[mkfs.index("--offset") + 1] == "4096"
    assert mkfs[-1] == "65536" and "ESP" in mkfs
    assert [c[0][-1] for c in seen[1:]] == ["::/EFI", "::/EFI/BOOT", "::/EFI/BOOT/BOOTX64.EFI"]
    assert all(env["SOURCE_DATE_EPOCH"] == "5" and env["TZ"] == "UTC" for _, env in seen[1:])


def test_undo_stack_runs_in_reverse_and_survives_failures() -> None:
    order: list[str] = []
    stack = assemble.UndoStack()
    stack.push("a", lambda: order.append("a"))
    stack.push("boom", lambda: (_ for _ in ()).throw(RuntimeError("x")))
    stack.push("c", lambda: order.append("c"))
    stack.unwind()
    assert order == ["c", "a"]
