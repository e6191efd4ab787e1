"""BOM and diff against real builds: two small images that differ by one apt package (hello), and a
second, uncached build of the first one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from assembler import bom, engine
from assembler.diff import diff
from assembler.fsutil import write_json
from assembler.inspect import inspect_target
from assembler.rootfs import layers
from assembler.rootfs.flatten import flatten
from tests.helpers import scratch_dir

FIXTURES = Path(__file__).parent / "fixtures"
SDE = 1_747_699_200  # the base recipe's epoch, as in conftest.py

pytestmark = pytest.mark.integration
ADDED = "hello"
# Besides hello's own files and its dpkg metadata, installing it rewrites only dpkg's database.
DPKG_DATABASE = {"var/lib/dpkg/status", "var/lib/dpkg/triggers/File"}


@dataclass(frozen=True)
class Build:
    name: str
    image_id: str
    archive: Path
    rootfs: Path
    out: Path
    spdx: dict[str, Any]


def _build(client: docker.DockerClient, fixture: str, name: str, root: Path, *, nocache: bool = False) -> Build:
    """The rootfs phase's steps (build, save, flatten, index layers) plus the BOM, into an out/-like dir."""
    built = engine.build_image(client, FIXTURES / fixture, tag=f"assembler-test/{name}:latest",
                               buildargs={"SOURCE_DATE_EPOCH": str(SDE)}, nocache=nocache)
    work = root / name
    archive = engine.save_image(client, built.id, work / "image.tar")
    rootfs = flatten(archive, work / "out" / f"{name}-rootfs.tar", source_date_epoch=SDE)
    index = layers.index_archive(archive, work / "out" / f"{name}-layers.json")
    oci = {"digest": built.id, "layers": [{"digest": s.diff_id, "step": s.created_by} for s in built.steps]}
    doc = bom.build_spdx(rootfs.path, image=fixture, rootfs_sha256=rootfs.sha256, source_date_epoch=SDE,
                         oci=oci, base_image=built.steps[0].diff_id, layers_index=index,
                         tools={"mke2fs": "mke2fs 1.47.2"})
    bom.write_document(doc, work / "out" / f"{name}.spdx.json")
    write_json(work / "out" / "manifest.json", {
        "image": name, "oci": oci, "rootfs": {"sha256": rootfs.sha256},
        "outputs": [{"format": "rootfs-tar", "path": rootfs.path.name, "sha256": rootfs.sha256},
                    {"format": "spdx", "path": f"{name}.spdx.json"}]})
    return Build(name, built.id, archive, rootfs.path, work / "out", doc)


@pytest.fixture(scope="module")
def builds(engine_client: docker.DockerClient, debian_base: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Build]]:
    with scratch_dir(tmp_path_factory, "bom") as root:
        try:
            yield {
                "a": _build(engine_client, "bom-a", "bom-a", root),
                "b": _build(engine_client, "bom-b", "bom-b", root),
                "a2": _build(engine_client, "bom-a", "bom-a2", root, nocache=True),
            }
        finally:
            for name in ("bom-a", "bom-b", "bom-a2"):
                engine.remove_image(engine_client, f"assembler-test/{name}:latest", force=True)


def _run_layer(build: Build) -> int:
    index = layers.load_index(build.out / f"{build.name}-layers.json")
    runs = [layer.index for layer in index.layers if layer.instruction.startswith("RUN ")]
    assert len(runs) == 1
    return runs[0]


def test_added_package_is_reported_with_its_files_and_step(builds: dict[str, Build]) -> None:
    report = diff(str(builds["a"].archive), str(builds["b"].archive))
    assert not report["identical"]
    packages = report["packages"]
    assert [p["name"] for p in packages["added"]] == [ADDED]
    assert packages["removed"] == packages["upgraded"] == packages["downgraded"] == []
    run_layer = _run_layer(builds["b"])
    added = packages["added"][0]
    assert added["layer"] == run_layer and added["step"].startswith("RUN ") and ADDED in added["step"]

    files = report["files"]
    assert files and all(f["side"] == "b" and f["layer"] == run_layer for f in files)
    assert {s["layer"] for s in report["steps"]} == {run_layer}
    owned = {f["path"] for f in files if f["packages"] == [ADDED]}
    rest = {f["path"] for f in files} - owned
    # The package's own regular files all appear as added, each owned by the package ...
    listed = set(added["files"])
    assert "usr/bin/hello" in owned
    regular = {f["path"] for f in files if f["change"] == "added" and f["type"] == "file"}
    assert listed >= (regular - {p for p in regular if p.startswith("var/lib/dpkg/")})
    # ... its dpkg metadata is attributed to it by name, and nothing else changed but dpkg's database.
    assert {p for p in owned if p.startswith("var/lib/dpkg/info/")} >= {"var/lib/dpkg/info/hello.list"}
    assert rest <= DPKG_DATABASE, rest - DPKG_DATABASE
    hello = next(f for f in files if f["path"] == "usr/bin/hello")
    assert hello["change"] == "added" and hello["mode"] == "0755" and hello["size"] > 0


def test_identical_builds_report_no_difference(builds: dict[str, Build]) -> None:
    report = diff(str(builds["a"].archive), str(builds["a2"].archive))
    assert report["identical"], json.dumps(report, indent=1)[:3000]
    assert report["files"] == []
    assert not any(report["packages"].values())
    assert all(row["status"] != "added" and row["status"] != "removed" for row in report["layers"])


def test_out_dirs_diff_like_archives(builds: dict[str, Build]) -> None:
    report = diff(str(builds["a"].out), str(builds["b"].out))
    assert [p["name"] for p in report["packages"]["added"]] == [ADDED]
    assert {f["layer"] for f in report["files"]} == {_run_layer(builds["b"])}
    assert diff(str(builds["a"].out), str(builds["a2"].out))["identical"]


def test_spdx_validates_and_lists_what_dpkg_query_reports(builds: dict[str, Build],
                                                           engine_client: docker.DockerClient) -> None:
    for build in (builds["a"], builds["b"]):
        assert bom.validate_spdx(build.spdx) == []
        out = engine.run_in_container(engine_client, build.image_id,
                                      ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"])
        expected = dict(line.split(" ", 1) for line in out.splitlines() if line.strip())
        listed = {name: facts["version"] for name, facts in bom.deb_packages(build.spdx).items()}
        assert listed == expected
    assert ADDED in bom.deb_packages(builds["b"].spdx) and ADDED not in bom.deb_packages(builds["a"].spdx)


def test_bom_is_deterministic(builds: dict[str, Build]) -> None:
    a, a2 = builds["a"], builds["a2"]
    assert a.rootfs.read_bytes() == a2.rootfs.read_bytes()
    doc_a = dict(a.spdx)
    doc_a2 = dict(a2.spdx)
    # The OCI digests differ (layer tars keep build times); everything derived from the rootfs does not.
    assert doc_a["documentNamespace"] == doc_a2["documentNamespace"]
    assert doc_a["creationInfo"]["created"] == "2025-05-20T00:00:00Z"
    assert bom.deb_packages(doc_a) == bom.deb_packages(doc_a2)


def test_inspect_reads_packages_and_layers(builds: dict[str, Build]) -> None:
    report = inspect_target(str(builds["b"].archive))
    names = {p["name"] for p in report["packages"]}
    assert ADDED in names and "dpkg" in names
    assert len(report["layers"]) == 3 and "apt-get install" in report["layers"][1]["step"]
    out_report = inspect_target(str(builds["b"].out))
    assert out_report["bom"] is not None and {p["name"] for p in out_report["packages"]} == names
