"""The engine adapter against the real Docker engine."""

from __future__ import annotations

import json
import socket
import tarfile
from contextlib import nullcontext
from pathlib import Path

import docker
import pytest

from assembler import engine
from assembler.errors import ConfigError, EngineError

FIXTURES = Path(__file__).parent / "fixtures"
SDE = 1_747_699_200  # the SOURCE_DATE_EPOCH of the session fixtures (conftest.py)
pytestmark = pytest.mark.integration


def dead_socket(tmp_path: Path) -> str:
    """A unix socket path that exists but where nobody listens."""
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return f"unix://{path}"


def test_docker_host_not_answering_is_an_error_never_a_fallback(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", dead_socket(tmp_path))
    for start in (True, False):
        with pytest.raises(EngineError, match="does not answer") as info:
            engine.connect(start=start)
        assert "dockerd" in info.value.resolution and "podman system service" in info.value.resolution


def test_nothing_running_and_no_start_names_how_to_start_one(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(engine, "DOCKER_SOCKET", Path(dead_socket(tmp_path).removeprefix("unix://")))
    monkeypatch.setattr(engine, "PODMAN_ROOT_SOCKET", tmp_path / "absent.sock")
    with pytest.raises(EngineError, match="no container engine is running") as info:
        engine.connect(start=False)
    assert "systemctl start docker" in info.value.resolution
    assert str(tmp_path / "podman" / "podman.sock") in info.value.details


def test_connect_finds_the_running_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    client = engine.connect(start=False)
    info = engine.engine_info(client)
    assert info.name == "docker" and info.version


def test_missing_containerfile_is_a_config_error(engine_client: docker.DockerClient, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Containerfile not found"):
        engine.build_image(engine_client, tmp_path, tag="assembler-test/none:latest", buildargs={})


def test_failing_step_names_the_step_and_its_output(engine_client: docker.DockerClient,
                                                    debian_base: str) -> None:
    lines: list[str] = []
    with pytest.raises(EngineError) as info:
        engine.build_image(engine_client, FIXTURES / "failing", tag="assembler-test/failing:latest",
                           buildargs={}, on_output=lines.append)
    assert "about-to-fail" in info.value.brief  # the failing instruction
    assert "marker-line-before-failure" in info.value.details
    assert "returned a non-zero code: 3" in info.value.details
    assert any("first-step-ok" in line for line in lines)


def test_build_reports_layers_with_their_instructions(engine_client: docker.DockerClient,
                                                      layers_image: engine.BuiltImage) -> None:
    inspect = engine_client.api.inspect_image(layers_image.id)
    assert [s.diff_id for s in layers_image.steps] == inspect["RootFS"]["Layers"]
    creators = [s.created_by for s in layers_image.steps]
    assert creators[0].startswith("mmdebstrap")  # the base layer
    assert "rm /opt/t/doomed" in creators[2]
    assert "/etc/fixture-release" in creators[-1]
    assert engine.image_id(engine_client, "assembler-test/layers:latest") == layers_image.id


def test_buildargs_copy_and_env_steps(engine_client: docker.DockerClient, debian_base: str) -> None:
    built = engine.build_image(engine_client, FIXTURES / "small", tag="assembler-test/small:latest",
                               buildargs={"SOURCE_DATE_EPOCH": str(SDE)}, nocache=True)
    creators = [s.created_by for s in built.steps]
    assert len(creators) == 3  # base, RUN, COPY; ENV/ARG make no layer
    assert "COPY" in creators[2]
    engine.remove_image(engine_client, built.tag)
    assert not engine.image_exists(engine_client, built.tag)
    engine.remove_image(engine_client, built.tag)  # already gone: no error


def test_save_and_load_roundtrip(engine_client: docker.DockerClient, layers_image: engine.BuiltImage,
                                 layers_archive: Path) -> None:
    with tarfile.open(layers_archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert len(manifest[0]["Layers"]) == len(layers_image.steps)
    engine_client.api.tag(layers_image.id, "assembler-test/roundtrip", "latest")
    engine.remove_image(engine_client, "assembler-test/roundtrip:latest")
    assert engine.load_archive(engine_client, layers_archive) == layers_image.id
    assert engine.image_exists(engine_client, layers_image.id)


def test_load_of_garbage_is_an_engine_error(engine_client: docker.DockerClient, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(EngineError, match="could not load"):
        engine.load_archive(engine_client, junk)


@pytest.mark.parametrize("alongside", [False, True], ids=["in-line", "alongside"])
def test_a_rebuild_under_the_same_tag_removes_the_image_it_superseded(engine_client: docker.DockerClient,
                                                                       debian_base: str, tmp_path: Path,
                                                                       alongside: bool) -> None:
    """In line (build_image's default) and on a thread of its own while the caller goes on (the rootfs phase's
    way): the superseded image is gone once the build (or the dropping_alongside block) returns."""
    context = tmp_path / "ctx"
    context.mkdir()
    tag = "assembler-test/superseded:latest"
    ids = []
    for content in ("first", "second"):
        (context / "Containerfile").write_text(
            "FROM localhost/assembler/base:debian-12\n"
            f"RUN echo {content} > /etc/superseded && echo {content} > /etc/superseded-step-2\n"
            f"RUN echo {content} >> /etc/superseded\n")
        with engine.dropping_alongside() if alongside else nullcontext(None) as drop:
            ids.append(engine.build_image(engine_client, context, tag=tag, buildargs={}, drop=drop).id)
    kept = engine.build_image(engine_client, context, tag="assembler-test/superseded-kept:latest", buildargs={})
    try:
        assert ids[0] != ids[1]
        assert engine.image_id(engine_client, ids[0]) is None  # gone, with its own step images
        assert engine.image_id(engine_client, tag) == ids[1]
        assert engine.image_id(engine_client, debian_base) == debian_base  # the shared base stays
        # The same image under a second tag: a rebuild of the first tag leaves it alone.
        assert kept.id == ids[1]
        (context / "Containerfile").write_text("FROM localhost/assembler/base:debian-12\nRUN echo third > /x\n")
        third = engine.build_image(engine_client, context, tag=tag, buildargs={})
        assert engine.image_id(engine_client, ids[1]) == ids[1] and third.id != ids[1]
    finally:
        for ref in (tag, "assembler-test/superseded-kept:latest"):
            engine.remove_image(engine_client, ref, force=True)



def test_a_pinned_image_outlives_a_concurrent_build_moving_its_tag(engine_client: docker.DockerClient,
                                                                    layers_image: engine.BuiltImage,
                                                                    tmp_path: Path) -> None:
    """What an image built on another one holds while it builds: another build of the parent moves the
    shared tag and drops the image it superseded, unless a pin still names it."""
    repo = "localhost/assembler/pin-test"
    (tmp_path / "Containerfile").write_text(f"FROM {layers_image.id}\nLABEL pin-test={tmp_path.name}\n")
    parent = engine.build_image(engine_client, tmp_path, tag=f"{repo}:latest", buildargs={}).id
    with engine.pinned(engine_client, parent, repo) as kept:
        assert kept
        engine_client.api.remove_image(f"{repo}:latest")  # the tag moved on to another build's image
        engine.drop_superseded(engine_client, parent)
        assert engine.image_exists(engine_client, parent)  # still there to build on
    tags = [t for image in engine_client.images.list(name=repo) for t in image.tags]
    assert not [t for t in tags if ":in-use-" in t]  # the pin went with the block
    assert not engine.image_exists(engine_client, parent)  # and, nothing else needing it, the image too
    with engine.pinned(engine_client, parent, repo) as kept:
        assert not kept  # gone: the caller builds it again


def test_an_image_gone_before_its_pin_is_looked_up_again(engine_client: docker.DockerClient,
                                                         layers_image: engine.BuiltImage) -> None:
    gone = "sha256:" + "0" * 64  # what a lookup returns when a concurrent build dropped it meanwhile
    answers = iter([gone, layers_image.id])
    with engine.pinned_fresh(engine_client, lambda: next(answers), str, "localhost/assembler/pin-test",
                             "the test image") as found:
        assert found == layers_image.id
    never = engine.pinned_fresh(engine_client, lambda: gone, str, "localhost/assembler/pin-test", "the test image")
    with pytest.raises(EngineError, match="keeps leaving the engine"), never:
        raise AssertionError("never pinned")
