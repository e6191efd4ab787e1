"""The matrix plan and what it emits (keys come from a stand-in here; the e2e test runs real ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from assembler import matrix
from assembler.errors import ConfigError
from assembler.matrix import MatrixEntry, MatrixFile


def keys(entry: MatrixEntry) -> list[tuple[str, str]]:
    """A build's phases as the pipeline names them: one rootfs/disk/boot per image, one convert per format."""
    phases = [("rootfs", f"r-{entry.image}"), ("disk", f"d-{entry.image}")]
    if entry.format != "raw":
        phases.append((f"convert:{entry.format}", f"c-{entry.image}-{entry.format}"))
    return [*phases, ("boot", f"b-{entry.image}")]


SPEC = MatrixFile(images=["debian-12", "debian-13"], formats=["raw", "qcow2"], providers=["aws", "gcp"],
                  exclude=[{"image": "debian-13", "provider": "gcp"}],
                  include=[{"image": "debian-12-k8s-node", "format": "vhd"}],
                  publish={"aws": {"bucket": "images"}}, store="http://127.0.0.1:5000/assembler/phases")


def test_expand_product_minus_exclude_plus_include() -> None:
    names = [e.name for e in matrix.expand(SPEC)]
    assert names == ["debian-12/raw/aws", "debian-12/raw/gcp", "debian-12/qcow2/aws", "debian-12/qcow2/gcp",
                     "debian-13/raw/aws", "debian-13/qcow2/aws", "debian-12-k8s-node/vhd"]
    again = MatrixFile.model_validate({**SPEC.model_dump(),
                                       "include": [{"image": "debian-12", "format": "raw", "provider": "aws"}]})
    assert len(matrix.expand(again)) == 6  # an include equal to a generated entry is not run twice
    with pytest.raises(ConfigError, match="no entries"):
        matrix.expand(MatrixFile(images=["debian-12"], exclude=[{"image": "debian-12"}]))


def test_plan_shares_phases_and_orders_entries() -> None:
    plan = matrix.make_plan(SPEC, keys)
    by_name = {p.entry.name: p for p in plan.entries}
    first, second = by_name["debian-12/raw/aws"], by_name["debian-12/qcow2/gcp"]
    assert first.after == () and set(first.shared) == {"rootfs", "disk", "boot"}
    assert second.after == (0, 2)  # rootfs/disk/boot from entry 0, convert:qcow2 from entry 2
    assert by_name["debian-12-k8s-node/vhd"].after == () and by_name["debian-12-k8s-node/vhd"].shared == ()
    # 3 images x (rootfs, disk, boot) + qcow2 for two images + vhd for one.
    assert plan.computed() == 12 and plan.total() == sum(len(keys(p.entry)) for p in plan.entries)


def test_commands_pass_publish_options() -> None:
    entry = matrix.expand(SPEC)[0]
    build, publish = matrix.commands(SPEC, entry, "/w/out")
    assert build == ["assembler", "build", "debian-12", "--format", "raw", "--output", "/w/out/debian-12"]
    assert publish == ["assembler", "publish", "debian-12", "--provider", "aws", "--out", "/w/out",
                       "--option", "bucket=images"]


def test_github_matrix_is_include_of_strings() -> None:
    data = json.loads(json.dumps(matrix.github_matrix(matrix.make_plan(SPEC, keys))))
    assert list(data) == ["include"] and len(data["include"]) == 7
    assert all(isinstance(v, str) for item in data["include"] for v in item.values())
    assert data["include"][-1] == {"image": "debian-12-k8s-node", "format": "vhd", "name": "debian-12-k8s-node/vhd"}
    big = MatrixFile(images=[f"img{i}" for i in range(129)], formats=["raw", "qcow2"])
    with pytest.raises(ConfigError, match="at most 256"):
        matrix.github_matrix(matrix.make_plan(big, keys))


def test_indexed_job_loads_with_the_kubernetes_client() -> None:
    plan = matrix.make_plan(SPEC, keys)
    manifest = yaml.safe_load(yaml.safe_dump(matrix.k8s_job(plan, name="m", image="reg/assembler:1",
                                                            parallelism=3)))
    api = k8s.ApiClient()
    job = api._ApiClient__deserialize(manifest, "V1Job")  # type: ignore[attr-defined]
    assert isinstance(job, k8s.V1Job)
    # Every field is one the client's models know: a round trip gives the manifest back unchanged.
    assert api.sanitize_for_serialization(job) == manifest
    assert job.spec.completion_mode == "Indexed" and job.spec.completions == 7 and job.spec.parallelism == 3
    container = job.spec.template.spec.containers[0]
    assert container.security_context.privileged is True
    env = {e.name: e.value for e in container.env}
    assert env["ASSEMBLER_CACHE_FROM"] == env["ASSEMBLER_CACHE_TO"] == SPEC.store
    script = container.command[-1]
    assert script.count(") assembler build ") == 7 and "$JOB_COMPLETION_INDEX" in script


def test_bad_matrix_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("images: [debian-12]\nformat: [raw]\n")
    with pytest.raises(ConfigError, match="not a valid matrix file") as err:
        matrix.load(path)
    assert "format" in err.value.details
    with pytest.raises(ConfigError, match="cannot read"):
        matrix.load(tmp_path / "missing.yaml")


def test_phases_in_the_store_make_no_entry_wait() -> None:
    spec = MatrixFile(include=[{"image": "debian-12", "format": "qcow2"}, {"image": "debian-12", "format": "vhd"},
                               {"image": "debian-12", "format": "vhd", "provider": "oci"}])
    stored = {"r-debian-12", "d-debian-12", "b-debian-12", "c-debian-12-qcow2"}
    plan = matrix.make_plan(spec, keys, lambda key: key in stored)
    assert [p.after for p in plan.entries] == [(), (), (1,)]  # only the vhd conversion is waited for
    assert plan.entries[1].stored == ("rootfs", "disk", "boot") and plan.computed() == 1


def test_registry_url_error_never_echoes_credentials() -> None:
    from assembler.registry import repository

    with pytest.raises(ConfigError) as err:
        repository("http://user:s3cret@registry.internal:5000")
    assert "s3cret" not in str(err.value.brief) and "registry.internal" in err.value.brief
