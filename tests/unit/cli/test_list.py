"""`assembler list`: the OS x Kubernetes matrix comes from the images' own properties."""

from __future__ import annotations

import json

from assembler.cli.list_cmd import kubernetes_minor, node_matrix
from assembler.config import list_images, resolve_image
from tests.unit.cli.invoke import run


def test_the_matrix_has_every_os_of_the_node_images() -> None:
    specs = [resolve_image(name) for name in list_images()]
    matrix = node_matrix(specs)
    assert matrix["debian-12"]["1.30"] == "debian-12-k8s-node"
    assert matrix["debian-13"]["1.30"] == "debian-13-k8s-node"
    assert set(matrix["ubuntu-24.04"]) == {"1.30", "1.31", "1.32", "1.33", "1.34", "1.35"}
    plain = next(s for s in specs if s.name == "debian-13")
    assert kubernetes_minor(plain) is None and "debian-13" not in {n for row in matrix.values() for n in row.values()}


def test_list_as_json_has_a_row_per_image() -> None:
    result = run("list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(list_images())
    assert rows["debian-13"] == {"name": "debian-13", "base": "debian-13", "formats": ["raw", "qcow2"],
                                 "description": resolve_image("debian-13").config.description,
                                 "os": None, "kubernetes_minor": None}
    assert (rows["debian-13-k8s-node"]["os"], rows["debian-13-k8s-node"]["kubernetes_minor"]) == ("debian-13", "1.30")


def test_list_shows_the_images_then_the_node_matrix() -> None:
    result = run("list")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # tables are for people: stderr
    said = result.stderr
    assert said.index("debian-13") < said.index("Kubernetes node images")
    grid = said[said.index("Kubernetes node images"):]
    assert "1.35" in grid and "ubuntu-24.04" in grid
