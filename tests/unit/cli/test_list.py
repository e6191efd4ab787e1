"""`assembler list`: the OS x Kubernetes matrix comes from the images' own properties."""

from __future__ import annotations

from assembler.cli.list_cmd import kubernetes_minor, node_matrix
from assembler.config import list_images, resolve_image


def test_the_matrix_has_every_os_of_the_node_images() -> None:
    specs = [resolve_image(name) for name in list_images()]
    matrix = node_matrix(specs)
    assert matrix["debian-12"]["1.30"] == "debian-12-k8s-node"
    assert matrix["debian-13"]["1.30"] == "debian-13-k8s-node"
    assert set(matrix["ubuntu-24.04"]) == {"1.30", "1.31", "1.32", "1.33", "1.34", "1.35"}
    plain = next(s for s in specs if s.name == "debian-13")
    assert kubernetes_minor(plain) is None and "debian-13" not in {n for row in matrix.values() for n in row.values()}
