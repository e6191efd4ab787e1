"""Image on image: `FROM assembler/NAME` names another image of ours; found, checked, keyed and recorded."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from assembler import bom, inputs
from assembler.config import resolve_image
from assembler.errors import ConfigError
from assembler.packages.lockfile import Lock, LockedPackage, make_lock
from assembler.phases.rootfs import RootfsPhase
from assembler.pipeline import BuildRun
from assembler.rootfs import ancestry
from assembler.rootfs.context import from_parent, parent_name
from assembler.store import Store
from tests.helpers import REPO
from tests.unit.bomdata import rootfs


def _child(root: Path, name: str = "child", parent: str = "debian-12", **config: object) -> Path:
    image = root / name
    image.mkdir(parents=True)
    (image / "Containerfile").write_text(f"FROM assembler/{parent}\nRUN echo {name} > /etc/{name}\n")
    if config:
        (image / "image.yaml").write_text(yaml.safe_dump(config))
    return image


def test_parent_name_is_a_literal_assembler_reference(tmp_path: Path) -> None:
    cf = tmp_path / "Containerfile"
    cf.write_text("FROM assembler/debian-12 AS build\nRUN true\nFROM assembler/debian-12\n")
    assert parent_name(cf) == "debian-12"
    for other in ("localhost/assembler/base:debian-12", "docker.io/assembler/debian-12", "assembler/debian-12:1",
                  "debian:12"):
        cf.write_text(f"FROM {other}\n")
        assert parent_name(cf) is None, other


def test_two_different_parents_are_one_clear_error(tmp_path: Path) -> None:
    cf = tmp_path / "Containerfile"
    cf.write_text("FROM assembler/debian-12 AS a\nFROM assembler/debian-13\n")
    with pytest.raises(ConfigError, match="2 images of ours: debian-12, debian-13"):
        parent_name(cf)


def test_from_parent_puts_the_engine_image_and_the_cache_label_in_every_matching_from() -> None:
    image_id = "sha256:" + "a" * 64
    text = ("# FROM assembler/debian-12 in a comment\nFROM assembler/debian-12 AS build\nRUN x\n"
            "FROM assembler/debian-12\n")
    out = from_parent(text, "debian-12", image_id, {"org.assembler.lock": "f" * 64})
    assert out.splitlines() == [
        "# FROM assembler/debian-12 in a comment",
        f"FROM {image_id} AS build", f'LABEL "org.assembler.lock"="{"f" * 64}"', "RUN x",
        f"FROM {image_id}", f'LABEL "org.assembler.lock"="{"f" * 64}"']
    assert from_parent("FROM assembler/debian-12-k8s\n", "debian-12", image_id) == "FROM assembler/debian-12-k8s\n"


def test_the_parent_is_found_beside_the_image_first_then_under_containerfiles(tmp_path: Path) -> None:
    child = resolve_image(str(_child(tmp_path)))
    found = ancestry.parent_spec(child)
    assert found is not None and found.context == (REPO / "Containerfiles" / "debian-12").resolve()
    shutil.copytree(REPO / "Containerfiles" / "debian-12", tmp_path / "debian-12")
    found = ancestry.parent_spec(child)
    assert found is not None and found.context == (tmp_path / "debian-12").resolve()
    assert ancestry.base_of(child) == "debian-12"  # inherited: the child declares none


def test_an_unknown_parent_itself_a_loop_and_another_base_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no image nosuch") as exc:
        ancestry.parent_spec(resolve_image(str(_child(tmp_path, parent="nosuch"))))
    assert "Containerfiles" in (exc.value.resolution or "")
    with pytest.raises(ConfigError, match="itself"):
        ancestry.ancestors(resolve_image(str(_child(tmp_path / "s", name="me", parent="me"))))
    _child(tmp_path / "loop", name="a", parent="b")
    with pytest.raises(ConfigError, match="loop: a -> b -> a"):
        ancestry.ancestors(resolve_image(str(_child(tmp_path / "loop", name="b", parent="a").parent / "a")))
    with pytest.raises(ConfigError, match="declare different bases") as exc:
        ancestry.ancestors(resolve_image(str(_child(tmp_path / "b", base="debian-13"))))
    assert "remove `base:`" in (exc.value.resolution or "")


def _material(image: Path, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    ctx = BuildRun(spec=resolve_image(str(image)), store=Store(tmp_path / "cache"), output_dir=tmp_path / "o",
                   formats=["raw"])
    return RootfsPhase(ctx).material()


def test_the_childs_rootfs_key_holds_the_parents_and_moves_with_it(tmp_path: Path) -> None:
    shutil.copytree(REPO / "Containerfiles" / "debian-12", tmp_path / "debian-12")
    child = _child(tmp_path)
    before = _material(child, tmp_path)
    assert before["parent"] == RootfsPhase(BuildRun(
        spec=resolve_image(str(tmp_path / "debian-12")), store=Store(tmp_path / "cache"),
        output_dir=tmp_path / "o", formats=[])).key()
    assert before["base"] is not None  # the parent's recipe: the child's packages resolve against its archive
    with (tmp_path / "debian-12" / "Containerfile").open("a") as handle:
        handle.write("RUN true\n")
    assert _material(child, tmp_path)["parent"] != before["parent"]
    assert "parent" not in _material(tmp_path / "debian-12", tmp_path)  # other images' keys stay as they were


def _pkg(name: str, layer: str) -> LockedPackage:
    return LockedPackage(name=name, version="1", architecture="amd64", url=f"http://deb.debian.org/{name}.deb",
                         size=1, sha256="0" * 64, layer=layer)  # type: ignore[arg-type]


def test_the_parents_packages_become_the_childs_layer_parent() -> None:
    lock = make_lock("debian-12", [], [_pkg("libc6", "base"), _pkg("sudo", "image")])
    carried = ancestry.inherited(lock)
    assert [(p.name, p.layer) for p in carried] == [("libc6", "parent"), ("sudo", "parent")]
    child = make_lock("child", [], [*carried, _pkg("jq", "image")])
    assert Lock.model_validate_json(child.model_dump_json()) == child


def test_the_bom_names_the_parent_and_which_layers_are_its(tmp_path: Path) -> None:
    facts = bom.bom_input(rootfs(tmp_path), image="child", rootfs_sha256="ab" * 32, source_date_epoch=1_700_000_000)
    layers = (("sha256:" + "1" * 64, "mmdebstrap"), ("sha256:" + "2" * 64, "RUN apt-get install sudo"),
              ("sha256:" + "3" * 64, "RUN apt-get install jq"))
    parent = bom.ParentFacts("debian-12", "4" * 64, 2, "sha256:" + "5" * 64)
    doc = bom.spdx_document(replace(facts, oci_digest="sha256:" + "6" * 64, layers=layers, parent=parent))
    names = {p["SPDXID"]: p["name"] for p in doc["packages"]}
    assert names[bom.PARENT_ID] == "debian-12"
    assert names["SPDXRef-Layer-0"].startswith("layer 0 (debian-12): ")
    assert names["SPDXRef-Layer-1"].startswith("layer 1 (debian-12): ")
    assert names["SPDXRef-Layer-2"].startswith("layer 2: ")
    contained = {r["relatedSpdxElement"] for r in doc["relationships"]
                 if r["spdxElementId"] == bom.PARENT_ID and r["relationshipType"] == "CONTAINS"}
    assert contained == {"SPDXRef-Layer-0", "SPDXRef-Layer-1"}
    assert {"spdxElementId": "SPDXRef-Image", "relationshipType": "DESCENDANT_OF",
            "relatedSpdxElement": bom.PARENT_ID} in doc["relationships"]
    assert bom.summary(doc)["parent"] == parent.summary()
    assert bom.validate_spdx(doc) == []


def test_build_inputs_nest_the_parents_and_a_damaged_parent_is_refused(tmp_path: Path) -> None:
    child = resolve_image(str(_child(tmp_path)))
    parent_inputs = inputs.build_inputs(resolve_image("debian-12"))
    recorded = inputs.build_inputs(child, parent=parent_inputs)
    assert inputs.parents_of(recorded) == [parent_inputs]
    inputs.check_inputs(recorded)
    restored = inputs.restore_context(recorded, tmp_path / "restored")
    inputs.restore_context(parent_inputs, tmp_path / "restored")
    found = ancestry.parent_spec(resolve_image(str(restored)))
    assert found is not None and found.context == (tmp_path / "restored" / "debian-12").resolve()
    with pytest.raises(ConfigError, match="damaged"):
        inputs.check_inputs({**recorded, "parent": {**parent_inputs, "context": [{"path": "x"}]}})
