"""arm64 beside amd64: names, the base recipe, the lock file, the disk layout, the emulator, detection."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from assembler.boot import qemu, runner
from assembler.cli.build_cmd import architecture
from assembler.config import resolve_image
from assembler.disk import gpt
from assembler.disk.layout import MiB, layout_from_dict, load_layout, plan_partitions
from assembler.errors import ConfigError
from assembler.packages.lockfile import lock_name
from assembler.phases.disk import DiskPhase
from assembler.phases.rootfs import RootfsPhase
from assembler.pipeline import BuildRun
from assembler.rootfs import bootstrap
from assembler.rootfs.context import rewrite_from
from assembler.store import Store
from tests.helpers import gpt_disk


def test_an_arm64_build_has_its_own_name_and_lock_file() -> None:
    spec = resolve_image("debian-12")
    arm = spec.for_arch("arm64")
    assert (arm.name, arm.arch, arm.context) == ("debian-12-arm64", "arm64", spec.context)
    assert arm.for_arch("amd64").name == "debian-12" and spec.for_arch("amd64") == spec
    assert lock_name("amd64") == "image.lock.json" and lock_name("arm64") == "image.lock.arm64.json"
    with pytest.raises(ConfigError, match="unknown architecture 'riscv64'"):
        architecture("riscv64")


def test_the_arm64_base_is_bootstrapped_for_arm64_under_its_own_tag(tmp_path: Path) -> None:
    recipe = bootstrap.load_recipe("debian-12")
    arm = bootstrap.for_arch(recipe, "arm64")
    assert (arm.architecture, arm.tag) == ("arm64", "localhost/assembler/base:debian-12-arm64")
    assert bootstrap.for_arch(recipe, "amd64") == recipe
    assert "--architectures=arm64" in bootstrap.mmdebstrap_command(arm, tmp_path / "x.tar")
    assert bootstrap.recipe_key(arm) != bootstrap.recipe_key(recipe)
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.addfile(tarfile.TarInfo("etc"), io.BytesIO(b""))
    bootstrap.base_archive(rootfs, arm.tag, 1_700_000_000, tmp_path / "image.tar", architecture="arm64")
    with tarfile.open(tmp_path / "image.tar") as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(archive.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
    assert config["architecture"] == "arm64"  # the engine runs its binaries through binfmt


def test_the_base_tag_is_rewritten_in_the_from_line_only() -> None:
    text = "# FROM localhost/assembler/base:debian-12\nFROM localhost/assembler/base:debian-12\nRUN true\n"
    assert rewrite_from(text, "localhost/assembler/base:debian-12", "localhost/assembler/base:debian-12-arm64") == (
        "# FROM localhost/assembler/base:debian-12\nFROM localhost/assembler/base:debian-12-arm64\nRUN true\n")


def _ctx(tmp_path: Path, arch: str) -> BuildRun:
    return BuildRun(spec=resolve_image("debian-12").for_arch(arch), store=Store(tmp_path / "cache"),  # type: ignore[arg-type]
                    output_dir=tmp_path / "out", formats=["raw"])


def test_keys_and_disk_of_an_arm64_build(tmp_path: Path) -> None:
    amd, arm = RootfsPhase(_ctx(tmp_path, "amd64")), RootfsPhase(_ctx(tmp_path, "arm64"))
    assert "arch" not in amd.material() and arm.material()["arch"] == "arm64"
    assert amd.key() != arm.key()
    disk = DiskPhase(arm.ctx, (arm,))
    layout = disk._layout()
    assert (layout.architecture, layout.firmware, [p.role for p in layout.partitions]) == (
        "arm64", ("uefi",), ["esp", "root"])
    assert disk._cmdline().endswith("console=ttyAMA0,115200n8")
    assert "ttyAMA0" not in DiskPhase(amd.ctx, (amd,))._cmdline()
    assert disk.material()["pcr_firmware"] is None  # the PCR prediction models x86 OVMF only


def test_an_arm64_layout_cannot_boot_bios_and_its_root_type_is_aarch64() -> None:
    with pytest.raises(ConfigError, match="boots amd64 only"):
        load_layout(None, {"architecture": "arm64"})
    layout = layout_from_dict({"firmware": ["uefi"], "architecture": "arm64", "partitions": [
        {"role": "esp", "size": "64MiB", "fs": "vfat"}, {"role": "root", "fs": "ext4"}]})
    planned = plan_partitions(layout, 1024 * MiB)
    script = gpt.gpt_script("DISK", [(p, f"G{p.number}", p.role) for p in planned], layout.architecture)
    assert "type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE, uuid=G2" in script


def test_boot_detects_the_architecture_from_the_gpt(tmp_path: Path) -> None:
    for arch, guid in (("amd64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
                       ("arm64", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE")):
        disk = gpt_disk(tmp_path / f"{arch}.raw", arch)
        layout = layout_from_dict({"firmware": ["uefi"], "architecture": arch, "partitions": [
            {"role": "esp", "size": "33MiB", "fs": "vfat"}, {"role": "root", "fs": "ext4"}]})
        planned = plan_partitions(layout, 16 * MiB)
        assert guid in gpt.gpt_script("X", [(p, "G", p.role) for p in planned], arch)
        assert gpt.disk_architecture(disk, "raw") == arch


def test_an_arm64_guest_runs_under_qemu_system_aarch64_with_aavmf(tmp_path: Path) -> None:
    spec = qemu.QemuSpec(overlay=tmp_path / "o.qcow2", seed=tmp_path / "seed.iso", firmware="uefi", ssh_port=2222,
                         console_log=tmp_path / "c.log", accelerator="tcg", ovmf_vars=tmp_path / "vars.fd",
                         arch="arm64")
    argv = qemu.qemu_argv(spec)
    assert argv[0] == "qemu-system-aarch64" and argv[argv.index("-machine") + 1] == "virt"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={qemu.AAVMF_CODE}" in argv
    assert "virtio-blk-pci,drive=disk0,bootindex=0" in argv
    with pytest.raises(ConfigError, match="pvscsi"):
        qemu.qemu_argv(spec.__class__(**{**spec.__dict__, "disk_bus": "pvscsi"}))
    with pytest.raises(ValueError, match="plain UEFI"):
        qemu.qemu_argv(spec.__class__(**{**spec.__dict__, "firmware": "bios"}))


def test_an_arm64_disk_boots_the_firmwares_it_has() -> None:
    assert runner._firmwares_for("arm64", ["bios", "uefi", "uefi-secureboot"]) == ["uefi"]
    assert runner._firmwares_for("amd64", ["bios", "uefi"]) == ["bios", "uefi"]
    with pytest.raises(ConfigError, match="cannot boot with bios"):
        runner._firmwares_for("arm64", ["bios"])
    probe = runner._machine_probe("arm64")
    from assembler.boot.checks import ProbeOutput

    assert probe.judge(ProbeOutput(0, "aarch64\n", ""))[0]
    assert not probe.judge(ProbeOutput(0, "x86_64\n", ""))[0]


def test_downloads_name_their_architecture_and_a_build_takes_its_own(tmp_path: Path) -> None:
    from assembler.rootfs.downloads import load_downloads

    path = tmp_path / "downloads.yaml"
    entry = {"name": "kubelet", "sha256": "a" * 64, "dest": "downloads/kubelet", "optional": True}
    path.write_text(json.dumps([
        {**entry, "url": "https://dl.k8s.io/v1/bin/linux/amd64/kubelet", "arch": "amd64"},
        {**entry, "url": "https://dl.k8s.io/v1/bin/linux/arm64/kubelet", "arch": "arm64", "sha256": "b" * 64},
        {"name": "common", "url": "https://example.org/c", "sha256": "c" * 64, "dest": "downloads/c"}]))
    assert [(d.name, d.sha256[0]) for d in load_downloads(path, "arm64")] == [("kubelet", "b"), ("common", "c")]
    assert [(d.name, d.sha256[0]) for d in load_downloads(path, "amd64")] == [("kubelet", "a"), ("common", "c")]
    assert len(load_downloads(path)) == 3  # every entry: what a bundle of both carries
    path.write_text(json.dumps([{**entry, "url": "https://x/1", "arch": "arm64"},
                                {**entry, "url": "https://x/2", "arch": "arm64"}]))
    with pytest.raises(ConfigError, match="share a dest"):
        load_downloads(path, "arm64")


def test_the_other_architectures_lock_is_no_input_of_a_build(tmp_path: Path) -> None:
    import shutil

    from tests.helpers import REPO

    image = tmp_path / "debian-12"
    shutil.copytree(REPO / "Containerfiles" / "debian-12", image)
    (image / "image.lock.arm64.json").unlink(missing_ok=True)

    def keys() -> tuple[str, str]:
        spec = resolve_image(str(image))
        ctx = BuildRun(spec=spec, store=Store(tmp_path / "c"), output_dir=tmp_path / "o", formats=["raw"])
        arm = BuildRun(spec=spec.for_arch("arm64"), store=Store(tmp_path / "c"), output_dir=tmp_path / "o",
                       formats=["raw"])
        return RootfsPhase(ctx).material()["context"], RootfsPhase(arm).material()["context"]

    amd, arm = keys()
    (image / "image.lock.arm64.json").write_text("{}\n")
    assert keys() == (amd, keys()[1]) and keys()[1] != arm  # only the arm64 build sees its lock


def test_an_arm64_build_of_an_image_declaring_bios_boots_uefi(tmp_path: Path) -> None:
    from assembler.boot.runner import firmwares_of_arch
    from assembler.phases.boot import BootPhase

    assert firmwares_of_arch("arm64", ["bios"]) == ["uefi"]
    assert firmwares_of_arch("arm64", ["bios", "uefi", "uefi-secureboot"]) == ["uefi"]
    assert firmwares_of_arch("amd64", ["bios"]) == ["bios"]
    twin = resolve_image("debian-12-k8s-node")
    assert twin.config.boot.firmware == "bios"
    arm = BuildRun(spec=twin.for_arch("arm64"), store=Store(tmp_path / "c"), output_dir=tmp_path / "o",
                   formats=["raw"])
    amd = BuildRun(spec=twin, store=Store(tmp_path / "c"), output_dir=tmp_path / "o", formats=["raw"])
    assert BootPhase(arm).material()["firmware"] == ["uefi"] and BootPhase(amd).material()["firmware"] == ["bios"]


def test_a_base_recipe_given_by_path_under_another_name_is_found_for_both_architectures(tmp_path: Path) -> None:
    """image.yaml `base: /some/dir` whose recipe is named otherwise (tests/e2e/test_lock_moving's): the amd64
    build keeps its Containerfile, the arm64 one starts FROM the recipe's arm64 tag."""
    recipes = tmp_path / "rootfs"
    recipes.mkdir()
    (recipes / "recipe.yaml").write_text("name: lock-test\nsource_date_epoch: 1\ntag: localhost/assembler/base:lt\n")
    image = tmp_path / "img"
    image.mkdir()
    (image / "Containerfile").write_text("FROM localhost/assembler/base:lt\nRUN true\n")
    (image / "image.yaml").write_text(f"base: {recipes}\n")
    for arch, first in (("amd64", "FROM localhost/assembler/base:lt"),
                        ("arm64", "FROM localhost/assembler/base:lt-arm64")):
        ctx = BuildRun(spec=resolve_image(str(image)).for_arch(arch), store=Store(tmp_path / "c"),  # type: ignore[arg-type]
                       output_dir=tmp_path / "o", formats=["raw"])
        phase = RootfsPhase(ctx)
        recipe = phase._recipe()
        assert recipe is not None and recipe.architecture == arch
        context = phase._on_base(image, recipe, tmp_path / arch)
        assert (context / "Containerfile").read_text().splitlines()[0] == first
        assert (image / "Containerfile").read_text().startswith("FROM localhost/assembler/base:lt\n")
