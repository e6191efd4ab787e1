"""Every input of every phase, changed one at a time: exactly the phases that use it see a new key.

"Uses" is read off the phases' own material (what is hashed besides the upstream keys): a phase downstream of
a changed phase gets a new key through its input key anyway; what must not happen is a phase that uses an
input leaving it out (a stale entry reused) or a phase hashing an input it never reads (a needless rebuild).
The disk phase hashes the whole image directory because the BOM it embeds carries every file of it.
"""

from __future__ import annotations

import shutil
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import assembler.formats as formats
from assembler import run
from assembler.build import phases_for
from assembler.config import resolve_image
from assembler.fsutil import canonical_json
from assembler.pipeline import BuildRun
from assembler.rootfs.bootstrap import BaseRecipe
from assembler.store import Store
from tests.helpers import REPO

FORMATS = ["raw", "qcow2", "ova", "gce", "vmdk", "qcow2-compressed", "azure-vhd"]
CONVERTS = {f"convert:{f}" for f in FORMATS if f != "raw"}
BUILD = {"rootfs", "disk"}  # the engine build's inputs are also in the embedded BOM


class Image:
    """A copy of debian-13 with its base recipe beside it, so recipe edits stay in the test's directory."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "debian-13"
        shutil.copytree(REPO / "Containerfiles" / "debian-13", self.dir)
        self.recipe = root / "recipe"
        shutil.copytree(REPO / "rootfs" / "debian-13", self.recipe)
        self.profiles = root / "formats"
        shutil.copytree(REPO / "formats", self.profiles)
        self.edit_yaml("image.yaml", lambda d: d.update(base=str(self.recipe)))
        self.cache = root / "cache"
        self.size: str | None = None
        self.locked = False

    def edit_yaml(self, name: str, change: Callable[[dict[str, Any]], object], root: Path | None = None) -> None:
        path = (root or self.dir) / name
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data))

    def materials(self) -> dict[str, bytes]:
        spec = resolve_image(str(self.dir))
        ctx = BuildRun(spec=spec, store=Store(self.cache), output_dir=self.dir.parent / "out", formats=FORMATS,
                           disk_size=self.size, locked=self.locked)
        return {phase.label: canonical_json(phase.material()) for phase in phases_for(ctx)}


@pytest.fixture()
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Image:
    made = Image(tmp_path)
    monkeypatch.setattr(formats, "formats_dir", lambda: made.profiles)
    return made


def changed_by(image: Image, edit: Callable[[], object]) -> set[str]:
    before = image.materials()
    edit()
    after = image.materials()
    assert before.keys() == after.keys()
    return {label for label in before if before[label] != after[label]}


def _append(path: Path, text: str) -> Callable[[], None]:
    return lambda: path.write_text(path.read_text() + text)


# ------------------------------------------------------------------------------- the image directory

def test_each_file_of_the_image_directory(image: Image) -> None:
    d = image.dir
    assert changed_by(image, _append(d / "Containerfile", "RUN true\n")) == BUILD
    assert changed_by(image, _append(d / "image.lock.json", "\n")) == BUILD
    assert changed_by(image, lambda: (d / "files" / "new.conf").write_text("x\n")) == BUILD
    assert changed_by(image, lambda: (d / "downloads.yaml").write_text("[]\n")) == BUILD
    assert changed_by(image, _append(d / "checks.yaml", "# edited\n")) == {"disk", "boot"}


@pytest.mark.parametrize(("field", "value", "users"), [
    ("description", "other", {"disk"}),
    ("source_date_epoch", 1754697601, BUILD | CONVERTS),
    ("build_args", {"X": "1"}, BUILD),
    ("secrets", {"api": {"env": "API_TOKEN"}}, BUILD),
    ("formats", ["raw"], {"disk"}),
    ("properties", {"kubernetes": "1.30"}, {"disk"} | CONVERTS),
    ("snapshots", {"http://deb.debian.org/debian": "http://s.example/{timestamp}"}, {"disk"}),
    ("disk.size", "8G", {"disk"}),
    ("disk.headroom", "1G", {"disk"}),
    ("disk.cmdline", "console=ttyS0", {"disk"}),
    ("disk.layout", "gpt-bios-uefi", {"disk"}),  # the default, named: the same layout, but image.yaml changed
    ("disk.layout_overrides", {"root": {"reserved_percent": 5}}, {"disk"}),
    ("boot.firmware", "uefi", {"disk", "boot"}),
    ("boot.disk_buses", ["virtio", "scsi"], {"disk", "boot"}),
    ("boot.timeout", 900, {"disk"}),  # how long to wait changes no result
])
def test_each_image_yaml_field(image: Image, field: str, value: object, users: set[str]) -> None:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = field.split(".")
        for name in parents:
            data = data.setdefault(name, {})
        data[last] = value

    assert changed_by(image, lambda: image.edit_yaml("image.yaml", edit)) == users


def test_the_checks_file_named_by_image_yaml(image: Image) -> None:
    shutil.copyfile(image.dir / "checks.yaml", image.dir / "other-checks.yaml")
    _append(image.dir / "other-checks.yaml", "# another suite\n")()
    # Its content is the boot phase's; the new file and the new name are in the disk's embedded BOM.
    assert changed_by(image, lambda: image.edit_yaml("image.yaml", lambda d: d["boot"].update(
        checks="other-checks.yaml"))) == {"disk", "boot"}


# --------------------------------------------------------------------------- options of the build itself

def test_build_options(image: Image) -> None:
    assert changed_by(image, lambda: setattr(image, "size", "9G")) == {"disk"}
    assert changed_by(image, lambda: setattr(image, "locked", True)) == {"rootfs"}


# ------------------------------------------------------------------ format profiles, layouts, base recipe

def _other_value(model: type[Any], name: str, value: object) -> object:
    annotation = model.model_fields[name].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return next(v for v in typing.get_args(annotation) if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return f"{value}x"


def test_each_option_of_each_format_profile(image: Image) -> None:
    profiles = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(image.profiles.glob("*.yaml"))}
    walked = 0
    for profile, data in profiles.items():
        if profile not in FORMATS:
            continue
        model = type(formats.resolve(profile).options)
        for option, value in data.get("options", {}).items():
            other = _other_value(model, option, value)
            edit = lambda p=profile, o=option, v=other: image.edit_yaml(  # noqa: E731
                f"{p}.yaml", lambda d: d["options"].update({o: v}), image.profiles)
            assert changed_by(image, edit) == {f"convert:{profile}"}, (profile, option)
            walked += 1
    assert walked == 13  # every option of ova (7), gce, qcow2-compressed and azure-vhd (2 each)


def test_each_field_of_the_disk_layout(image: Image) -> None:
    layout = image.dir.parent / "layout.yaml"  # outside the image directory, which is all build context
    shutil.copyfile(REPO / "formats" / "layouts" / "gpt-bios-uefi.yaml", layout)
    image.edit_yaml("image.yaml", lambda d: d.setdefault("disk", {}).update(layout=str(layout)))
    edits: list[Callable[[dict[str, Any]], object]] = [
        lambda d: d["root"].update(reserved_percent=2),
        lambda d: d["root"].update(size_factor=1.2),
        lambda d: d["root"].update(mount_options="errors=panic"),
        lambda d: d["root"].update(label="rootfs"),
        lambda d: d["partitions"][1].update(size="128MiB"),
        lambda d: d["partitions"][1].update(label="EFI"),
        lambda d: d["root"]["features"].remove("huge_file"),
    ]
    for edit in edits:
        assert changed_by(image, lambda e=edit: image.edit_yaml("layout.yaml", e, layout.parent)) == {"disk"}


def test_each_field_of_the_base_recipe(image: Image) -> None:
    recipe = yaml.safe_load((image.recipe / "recipe.yaml").read_text())
    (image.recipe / "extra.gpg").write_bytes((REPO / "rootfs" / "debian-13").joinpath("recipe.yaml").read_bytes())
    others = {"components": ["main", "contrib"], "packages": ["less"], "keyrings": ["extra.gpg"]}
    for field in (*recipe, "keyrings"):
        other = others.get(field, _other_value(BaseRecipe, field, recipe.get(field)))
        edit = lambda f=field, v=other: image.edit_yaml(  # noqa: E731
            "recipe.yaml", lambda d: d.update({f: v}), image.recipe)
        assert changed_by(image, edit) == {"rootfs"}, field


# ---------------------------------------------------------------------------------------- tool versions

@pytest.mark.parametrize(("tool", "users"), [
    ("mke2fs", {"disk"}), ("sfdisk", {"disk"}), ("grub-mkimage", {"disk"}), ("mcopy", {"disk"}),
    ("qemu-img", CONVERTS), ("mmdebstrap", {"rootfs"}),
])
def test_each_tool_version(image: Image, monkeypatch: pytest.MonkeyPatch, tool: str, users: set[str]) -> None:
    real = run._tool_version

    def newer(name: str, args: tuple[str, ...]) -> str:
        return real(name, args) + (" (newer)" if name == tool else "")

    assert changed_by(image, lambda: monkeypatch.setattr(run, "_tool_version", newer)) == users
