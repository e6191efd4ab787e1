"""Session-wide engine fixtures: one client, one base image, one fixture image and its flattened rootfs."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from assembler import engine
from assembler.rootfs.bootstrap import ensure_base, load_recipe
from assembler.rootfs.flatten import FlattenResult, flatten

FIXTURES = Path(__file__).parent / "fixtures"
SDE = 1_747_699_200


@pytest.fixture(scope="session")
def engine_client() -> docker.DockerClient:
    return engine.connect()


@pytest.fixture(scope="session")
def debian_base(engine_client: docker.DockerClient, shared_cache: Path) -> str:
    """The debian-12 base loaded as localhost/assembler/base:debian-12 (bootstrapped once per cache)."""
    return ensure_base(engine_client, load_recipe("debian-12"), shared_cache).image_id


@pytest.fixture(scope="session")
def layers_image(engine_client: docker.DockerClient, debian_base: str) -> engine.BuiltImage:
    return engine.build_image(engine_client, FIXTURES / "layers", tag="assembler-test/layers:latest",
                              buildargs={"SOURCE_DATE_EPOCH": str(SDE)})


@pytest.fixture(scope="session")
def layers_archive(engine_client: docker.DockerClient, layers_image: engine.BuiltImage,
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine.save_image(engine_client, layers_image.id, tmp_path_factory.mktemp("layers") / "image.tar")


@pytest.fixture(scope="session")
def layers_rootfs(layers_archive: Path) -> FlattenResult:
    return flatten(layers_archive, layers_archive.with_name("rootfs.tar"), source_date_epoch=SDE)
