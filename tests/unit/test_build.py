"""build.py: which phases a build has, the plan (a dry run resolves nothing), and a whole build of small
in-memory phases: the space check before anything runs, the outputs, manifest.json, reuse on the next run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from assembler import build, space
from assembler.config import ImageConfig, ImageSpec, ScanConfig, resolve_image
from assembler.pipeline import Action, Artefact, BuildRun, Phase
from assembler.space import NoSpaceError
from assembler.store import Entry, Store
from tests.helpers import REPO


def _ctx(tmp_path: Path, formats: list[str], **options: Any) -> BuildRun:
    config = options.pop("config", ImageConfig())
    spec = ImageSpec(name="img", context=tmp_path, containerfile=tmp_path / "Containerfile", config=config)
    return BuildRun(spec=spec, store=Store(tmp_path / "cache"), output_dir=tmp_path / "out", formats=formats,
                    **options)


def _shape(phases: list[Phase]) -> list[tuple[str, list[str]]]:
    return [(p.label, [i.label for i in p.inputs]) for p in phases]


def test_a_build_is_rootfs_disk_one_conversion_per_format_then_boot(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, ["raw", "qcow2", "vmdk"])
    assert _shape(build.phases_for(ctx)) == [
        ("rootfs", []), ("disk", ["rootfs"]), ("convert:qcow2", ["disk"]), ("convert:vmdk", ["disk"]),
        ("boot", ["disk"]),
    ]  # raw is the disk phase's own file: no conversion


def test_scan_comes_before_the_conversions_and_boot_test_can_be_left_out(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, ["qcow2"], boot_test=False, config=ImageConfig(scan=ScanConfig(db="osv.zip")))
    assert _shape(build.phases_for(ctx)) == [
        ("rootfs", []), ("disk", ["rootfs"]), ("scan", ["disk"]), ("convert:qcow2", ["disk"]),
    ]


class Recorded(Phase):
    """A phase that notes when it is resolved and keyed, writes one file and declares it an output."""

    def __init__(self, ctx: BuildRun, inputs: tuple[Phase, ...], label: str, kind: str, log: list[str]) -> None:
        super().__init__(ctx, inputs)
        self._label, self.log, self.runs = label, log, 0
        self.kind = kind  # type: ignore[misc]  # a ClassVar on real phases; one class stands in for each here

    @property
    def label(self) -> str:
        return self._label

    def resolve(self) -> None:
        self.log.append(f"resolve {self.label}")

    def material(self) -> dict[str, Any]:
        self.log.append(f"key {self.label}")
        return {"label": self.label}

    def execute(self, out: Path) -> dict[str, Any]:
        self.runs += 1
        (out / f"{self.label}.bin").write_text(f"made by {self.label}\n")
        return {"made": self.label}

    def artefacts(self, entry: Entry) -> list[Artefact]:
        name = f"{self.label}.bin"
        return [Artefact(entry.file(name), f"img-{name}", entry.key, self.kind)]

    def manifest_fields(self, entry: Entry) -> dict[str, Any]:
        return {self.label: entry.meta["made"]}


def _fake_phases(ctx: BuildRun, log: list[str]) -> list[Recorded]:
    rootfs = Recorded(ctx, (), "rootfs", "rootfs", log)
    disk = Recorded(ctx, (rootfs,), "disk", "disk", log)
    return [rootfs, disk, Recorded(ctx, (disk,), "convert:qcow2", "convert", log)]


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    """build.phases_for answers with in-memory phases; the list holds the ones of the latest call."""
    made: list[Recorded] = []
    log: list[str] = []

    def phases_for(ctx: BuildRun) -> list[Phase]:
        made[:] = _fake_phases(ctx, log)
        return list(made)

    monkeypatch.setattr(build, "phases_for", phases_for)
    return made


def test_a_dry_run_plan_resolves_nothing(tmp_path: Path, fake: list[Recorded]) -> None:
    plan = build.plan_build(_ctx(tmp_path, ["raw", "qcow2"]), resolve=False)
    assert [(s.phase.label, s.action) for s in plan] == [
        ("rootfs", Action.RUN), ("disk", Action.RUN), ("convert:qcow2", Action.RUN)]
    assert not [line for line in fake[0].log if line.startswith("resolve")]


def test_a_real_plan_resolves_every_phase_before_any_key(tmp_path: Path, fake: list[Recorded]) -> None:
    build.plan_build(_ctx(tmp_path, ["raw", "qcow2"]))
    log = fake[0].log
    resolved = [line for line in log if line.startswith("resolve")]
    assert resolved == ["resolve rootfs", "resolve disk", "resolve convert:qcow2"]
    assert log[:3] == resolved  # keys may use what resolve() found


def test_the_plan_of_a_real_image_writes_nothing_and_follows_the_selection(tmp_path: Path) -> None:
    image = tmp_path / "debian-13"
    shutil.copytree(REPO / "Containerfiles" / "debian-13", image)
    ctx = BuildRun(spec=resolve_image(str(image)), store=Store(tmp_path / "cache"), output_dir=tmp_path / "out",
                   formats=["raw", "qcow2"])
    plan = build.plan_build(ctx, {"disk"}, resolve=False)
    assert [(s.phase.label, s.action.value, s.reason) for s in plan] == [
        ("rootfs", "run", "not built before; needed by a selected phase"),
        ("disk", "run", "not built before"),
        ("convert:qcow2", "skip", "not selected"),
        ("boot", "skip", "not selected"),
    ]
    assert all(len(s.key) == 64 for s in plan)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_the_plan_table_names_each_phase_its_short_key_and_why(tmp_path: Path, fake: list[Recorded],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    plan = build.plan_build(_ctx(tmp_path, ["raw", "qcow2"]), resolve=False)
    build.print_plan(plan)
    err = capsys.readouterr().err
    for step in plan:
        line = next(x for x in err.splitlines() if step.phase.label in x)
        assert step.key[:12] in line and "run" in line and "not built before" in line


def test_a_build_that_would_not_fit_stops_before_any_phase(tmp_path: Path, fake: list[Recorded],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda path: space.GIB // 2)
    with pytest.raises(NoSpaceError) as raised:
        build.build(_ctx(tmp_path, ["raw", "qcow2"]))
    assert "0.5 GiB free" in raised.value.brief
    assert [p.runs for p in fake] == [0, 0, 0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_build_publishes_its_outputs_and_manifest_then_reuses_everything(
        tmp_path: Path, fake: list[Recorded], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The estimates are sized for real images (GiB per phase), not these few bytes: the room of the machine
    # running the tests must not decide the outcome.
    monkeypatch.setattr(space, "free_bytes", lambda path: 1 << 50)
    monkeypatch.chdir(tmp_path)
    ctx = _ctx(tmp_path, ["raw", "qcow2"])
    manifest = build.build(ctx)

    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert manifest["image"] == "img"
    assert manifest["source_date_epoch"] == ImageConfig().source_date_epoch
    assert [(r["name"], r["cached"], r["source"]) for r in manifest["phases"]] == [
        ("rootfs", False, "built"), ("disk", False, "built"), ("convert:qcow2", False, "built")]
    assert [(o["format"], o["path"]) for o in manifest["outputs"]] == [
        ("rootfs", "img-rootfs.bin"), ("disk", "img-disk.bin"), ("convert", "img-convert:qcow2.bin")]
    assert (tmp_path / "out" / "img-disk.bin").read_text() == "made by disk\n"
    assert {manifest[p] for p in ("rootfs", "disk", "convert:qcow2")} == {"rootfs", "disk", "convert:qcow2"}
    assert manifest["tools"] == build.tool_versions()
    assert isinstance(manifest["seconds"], float)
    err = capsys.readouterr().err
    assert "done img in" in err and "out/img-disk.bin" in err and "out/manifest.json" in err
    assert str(tmp_path) not in err  # inside the working directory, paths are shown relative to it

    again = build.build(_ctx(tmp_path, ["raw", "qcow2"]))
    assert [(r["name"], r["cached"], r["source"]) for r in again["phases"]] == [
        ("rootfs", True, "local cache"), ("disk", True, "local cache"), ("convert:qcow2", True, "local cache")]
    assert [p.runs for p in fake] == [0, 0, 0]
    assert again["outputs"] == manifest["outputs"]


def test_a_build_removes_what_a_killed_build_left(tmp_path: Path, fake: list[Recorded],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda path: 1 << 50)
    orphan = tmp_path / "cache" / "tmp" / "rootfs-orphan"
    orphan.mkdir(parents=True)
    (orphan / "half.tar").write_bytes(b"x")
    build.build(_ctx(tmp_path, ["raw"]))
    assert not orphan.exists()
    assert "removed rootfs-orphan, left in the cache by a killed build" in capsys.readouterr().err


def test_outputs_outside_the_working_directory_are_shown_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ctx = _ctx(tmp_path, ["raw"])
    build.print_outputs(ctx, [{"format": "raw", "path": "img.raw"}], 1.5)
    err = capsys.readouterr().err
    assert f"done img in 1.5 s: {tmp_path / 'out'}/" in err
    assert f"{tmp_path / 'out' / 'img.raw'}  (raw)" in err
    assert f"{tmp_path / 'out' / 'manifest.json'}  (manifest)" in err
