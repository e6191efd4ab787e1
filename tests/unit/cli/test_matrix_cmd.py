"""`assembler matrix`: a matrix of debian-13 in two formats, planned with an empty cache: the plan as JSON and
as a table, emitted for GitHub Actions and Kubernetes, and --run refused without a registry store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.unit.cli.invoke import error_of, run


@pytest.fixture()
def matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ASSEMBLER_CACHE_DIR", str(tmp_path / "cache"))  # keys_of's store: never the user's
    monkeypatch.delenv("ASSEMBLER_CACHE_TO", raising=False)
    path = tmp_path / "matrix.yaml"
    path.write_text("images: [debian-13]\nformats: [qcow2, vmdk]\nboot_test: false\n")
    return path


def test_the_plan_shares_the_rootfs_and_disk_and_keys_them_as_a_build_would(matrix: Path, tmp_path: Path) -> None:
    result = run("matrix", str(matrix), "--json")
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [(e["name"], e["after"], e["shared"]) for e in entries] == [
        ("debian-13/qcow2", [], ["rootfs", "disk"]), ("debian-13/vmdk", [0], ["rootfs", "disk"])]
    built = run("build", "debian-13", "-f", "qcow2", "--no-boot-test", "--dry-run", "--json",
                "--cache-dir", str(tmp_path / "cache"))
    assert built.exit_code == 0, built.output
    assert entries[0]["phases"] == [{"phase": s["phase"], "key": s["key"]} for s in json.loads(built.stdout)]


def test_the_plan_table_counts_what_is_computed_once(matrix: Path) -> None:
    result = run("matrix", str(matrix))
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "2 entries: 4 phases to compute, each once (6 if each entry built alone" in said
    assert "debian-13/qcow2" in said and "debian-13/vmdk" in said


def test_github_gets_its_strategy_matrix(matrix: Path) -> None:
    result = run("matrix", str(matrix), "--emit", "github")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"include": [
        {"image": "debian-13", "format": "qcow2", "name": "debian-13/qcow2"},
        {"image": "debian-13", "format": "vmdk", "name": "debian-13/vmdk"}]}


def test_kubernetes_gets_an_indexed_job(matrix: Path) -> None:
    result = run("matrix", str(matrix), "--emit", "k8s", "--job-name", "nodes", "--job-image", "reg/asm:1")
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    assert (job["kind"], job["metadata"]["name"], job["spec"]["completionMode"], job["spec"]["completions"]) == \
        ("Job", "nodes", "Indexed", 2)
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "reg/asm:1"
    script = container["command"][-1]
    assert "assembler build debian-13 --format vmdk" in script and "--no-boot-test" in script


def test_run_needs_a_registry_store(matrix: Path, tmp_path: Path) -> None:
    error = error_of(run("matrix", str(matrix), "--run", "--workdir", str(tmp_path / "work")))
    assert error.brief == "--run needs a registry store: the entries share work only through it"
    assert "--store" in error.resolution
    assert not (tmp_path / "work").exists()


def test_workers_are_bounded(matrix: Path) -> None:
    result = run("matrix", str(matrix), "--workers", "0")
    assert result.exit_code == 2 and "--workers" in result.output
