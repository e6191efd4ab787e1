"""`assembler bundle`: an image's lock and every locked file into one OCI layout tar that `build --bundle`
reads back; what it refuses, and why."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from assembler.packages.lockfile import dumps, write_lock
from tests.unit.cli.invoke import error_of, run
from tests.unit.cli.lockedimage import DEB, INRELEASE, locked_image


def test_an_image_is_bundled_and_the_bundle_builds_it(tmp_path: Path) -> None:
    image = locked_image(tmp_path)
    bundle = tmp_path / "debian-13.bundle.tar"
    result = run("bundle", str(image.dir), "-o", str(bundle), "--cache-dir", str(image.cache), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["path"] == str(bundle)
    assert summary["blobs"] == 4  # the lock, the build inputs, the .deb, the InRelease
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        blobs = {name: tar.extractfile(name).read() for name in names  # type: ignore[union-attr]
                 if name.startswith("blobs/")}
    assert names[:2] == ["oci-layout", "index.json"]
    assert f"blobs/sha256/{summary['manifest'].removeprefix('sha256:')}" in names
    assert {DEB, INRELEASE, dumps(image.lock).encode()} <= set(blobs.values())

    # The bundle's own image takes it; its plan computes like any other.
    planned = run("build", str(image.dir), "--bundle", str(bundle), "--cache-dir", str(tmp_path / "elsewhere"),
                  "--dry-run", "--json")
    assert planned.exit_code == 0, planned.output
    assert [s["phase"] for s in json.loads(planned.stdout)][:2] == ["rootfs", "disk"]
    other = locked_image(tmp_path / "other", name="other")
    refused = error_of(run("build", str(other.dir), "--bundle", str(bundle), "--cache-dir",
                           str(tmp_path / "elsewhere"), "--dry-run"))
    assert refused.brief == f"the bundle {bundle} is for debian-13, not other"
    assert refused.resolution == "build debian-13 from it, or bundle other"


def test_the_same_inputs_give_the_same_bundle(tmp_path: Path) -> None:
    image = locked_image(tmp_path)
    digests = []
    for name in ("one.tar", "two.tar"):
        result = run("bundle", str(image.dir), "-o", str(tmp_path / name), "--cache-dir", str(image.cache),
                      "--json")
        assert result.exit_code == 0, result.output
        digests.append(json.loads(result.stdout)["manifest"])
    assert digests[0] == digests[1]
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


def test_a_finished_build_is_bundled_from_its_effective_lock(tmp_path: Path) -> None:
    image = locked_image(tmp_path)
    out = tmp_path / "out" / "debian-13"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"image": "debian-13"}))
    write_lock(out / "debian-13.lock.json", image.lock)
    result = run("bundle", str(out), "-o", str(tmp_path / "b.tar"), "--cache-dir", str(image.cache))
    assert result.exit_code == 0, result.output
    assert "4 blobs" in result.stderr


def test_nothing_to_write(tmp_path: Path) -> None:
    image = locked_image(tmp_path)
    error = error_of(run("bundle", str(image.dir), "--cache-dir", str(image.cache)))
    assert (error.brief, error.resolution) == ("nothing to write", "give --output FILE, --push REGISTRY_URL or both")


def test_an_image_without_a_lock(tmp_path: Path) -> None:
    image = tmp_path / "plain"
    image.mkdir()
    (image / "Containerfile").write_text("FROM docker.io/library/debian:13\n")
    error = error_of(run("bundle", str(image), "-o", str(tmp_path / "b.tar"), "--cache-dir", str(tmp_path)))
    assert error.brief == "plain has no image.lock.json"
    assert error.resolution == f"run `assembler lock {image}`"
    assert not (tmp_path / "b.tar").exists()


def test_a_build_directory_without_its_lock(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"image": "demo"}))
    error = error_of(run("bundle", str(out), "-o", str(tmp_path / "b.tar"), "--cache-dir", str(tmp_path)))
    assert error.brief == f"{out} holds no demo.lock.json"
