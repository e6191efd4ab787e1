"""Image on image: tests/e2e/data/debian-12-jq starts `FROM assembler/debian-12`, the shared debian-12 build.
It builds on that build (reused from the store, its engine image built again when the engine lost it), boots
with debian-12's checks plus its own, and its lock and BOM carry debian-12's forward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assembler import bom
from assembler.packages.lockfile import read_lock
from tests.e2e.conftest import Built, build_formats
from tests.helpers import REPO, cli

pytestmark = pytest.mark.e2e

CHILD = REPO / "tests" / "e2e" / "data" / "debian-12-jq"


@pytest.fixture(scope="module")
def child(debian12: Built, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("image-on-image")
    image = work / CHILD.name  # no debian-12 beside it: the parent is Containerfiles/debian-12
    shutil.copytree(CHILD, image)
    return build_formats(str(image), work / "out", debian12.cache, ("raw",))


def _spdx(built: Built) -> dict:  # type: ignore[type-arg]
    return bom.load_spdx(built.output("spdx"))


def test_the_image_builds_on_debian12_and_boots_with_both_images_checks(child: Built, debian12: Built) -> None:
    parent = child.manifest["parent"]
    assert parent["image"] == "debian-12" and parent["rootfs_sha256"] == debian12.manifest["rootfs"]["sha256"]
    runs = child.manifest["boot"]["runs"]
    assert runs and all(run["booted"] for run in runs)
    results = {r["name"]: r for run in runs for r in run["results"]}
    assert not [r for r in results.values() if not r["passed"]]
    assert results["command jq from the child image"]["passed"]  # the child's own step
    assert results["service ssh-hostkeys"]["passed"]  # debian-12's unit, inherited through its layers
    print(f"debian-12-jq on the cached debian-12: {child.seconds:.1f} s, phases "
          f"{[(p['name'], p['seconds']) for p in child.manifest['phases']]}")


def test_its_bom_lists_both_images_layers(child: Built, debian12: Built) -> None:
    doc = _spdx(child)
    names = {p["SPDXID"]: p for p in doc["packages"]}
    assert names[bom.PARENT_ID]["name"] == "debian-12"
    assert names[bom.PARENT_ID]["versionInfo"] == f"sha256:{debian12.manifest['rootfs']['sha256']}"
    ours = child.manifest["oci"]["layers"]
    theirs = debian12.manifest["oci"]["layers"]
    count = child.manifest["parent"]["layers"]
    assert count == len(theirs) and len(ours) == count + 2  # the jq step and the release file
    # The same steps bottom up; the digests too unless the engine had to build debian-12 again.
    assert [layer["step"] for layer in ours[:count]] == [layer["step"] for layer in theirs]
    if child.manifest["parent"]["oci"] == debian12.manifest["oci"]["digest"]:
        assert [layer["digest"] for layer in ours[:count]] == [layer["digest"] for layer in theirs]
    contained = {r["relatedSpdxElement"] for r in doc["relationships"]
                 if r["spdxElementId"] == bom.PARENT_ID and r["relationshipType"] == "CONTAINS"}
    assert contained == {f"SPDXRef-Layer-{i}" for i in range(count)}
    assert all(names[f"SPDXRef-Layer-{i}"]["name"].startswith(f"layer {i} (debian-12): ") for i in range(count))
    assert "apt-get install" in ours[count]["step"] and "jq" in ours[count]["step"]
    # jq's dpkg entry was written by the child's layer, sudo's by one of debian-12's.
    layer_of = {r["relatedSpdxElement"]: r["spdxElementId"] for r in doc["relationships"]
                if r["spdxElementId"].startswith("SPDXRef-Layer-") and r["relationshipType"] == "CONTAINS"}
    assert layer_of["SPDXRef-deb-jq-amd64"] == f"SPDXRef-Layer-{count}"
    assert int(layer_of["SPDXRef-deb-sudo-amd64"].rsplit("-", 1)[1]) < count
    recorded = bom.build_inputs_of(doc)
    assert recorded is not None and recorded["parent"]["image"] == "debian-12"


def test_its_lock_carries_debian12s_forward(child: Built, debian12: Built) -> None:
    ours = read_lock(child.output("lock"))
    theirs = read_lock(debian12.output("lock"))
    assert {(p.url, p.sha256) for p in ours.packages if p.layer == "parent"} == \
        {(p.url, p.sha256) for p in theirs.packages}
    own = {p.name for p in ours.packages if p.layer == "image"}
    assert "jq" in own and "sudo" not in own
    assert not [p for p in ours.packages if p.layer == "base"]  # debian-12's base is in its part


def test_an_unknown_image_of_ours_is_one_clear_error(tmp_path: Path, debian12: Built) -> None:
    image = tmp_path / "orphan"
    image.mkdir()
    (image / "Containerfile").write_text("FROM assembler/no-such-image\nRUN true\n")
    proc = cli("build", str(image), "--cache-dir", str(debian12.cache), "--output", str(tmp_path / "out"))
    said = " ".join(proc.stderr.split())  # the console wraps long lines
    assert proc.returncode != 0
    assert "starts FROM assembler/no-such-image, but there is no image no-such-image" in said, said
    assert "or change the FROM" in said and "Traceback" not in said
    assert not (tmp_path / "out").exists()


def test_diff_from_debian12_shows_the_images_own_layers_and_packages(child: Built, debian12: Built) -> None:
    proc = cli("diff", str(debian12.out), str(child.out), "--json", "--cache-dir", str(child.cache))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    statuses = [row["status"] for row in report["layers"]]
    assert statuses[-2:] == ["added", "added"] and "added" not in statuses[:-2], statuses
    if child.manifest["parent"]["oci"] == debian12.manifest["oci"]["digest"]:  # the engine kept debian-12's image
        assert set(statuses[:-2]) == {"same"}, statuses
    assert {p["name"] for p in report["packages"]["added"]} == {"jq", "libjq1", "libonig5"}
    assert not report["packages"]["removed"] and not report["packages"]["upgraded"]


def test_its_bom_rebuilds_both_images(child: Built, tmp_path: Path) -> None:
    """`assembler rebuild` restores debian-12's directory beside the image's from the nested build inputs and
    builds both anew (no cache): the same rootfs."""
    proc = cli("rebuild", str(child.output("spdx")), "--output", str(tmp_path / "rebuilt"), "--no-boot-test",
               "--cache-dir", str(child.cache), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["verified"] and report["actual"]["rootfs_sha256"] == child.manifest["rootfs"]["sha256"]
    assert "debian-12-jq <- debian-12" in " ".join(proc.stderr.split())
