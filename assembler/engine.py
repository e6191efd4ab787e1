"""The only module that talks to the container engine (Docker or Podman, through the Docker API).

Builds use the engine's classic builder via the low-level API with host networking (no bridge here),
stream their output, and turn a failing step into an EngineError naming the step and its last lines.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from assembler.errors import ConfigError, EngineError
from assembler.fsutil import atomic_path
from assembler.log import log
from assembler.run import require_tool, spawn

T = TypeVar("T")
PIN_ATTEMPTS = 3  # an image looked up (loaded or built again if gone) and pinned

DOCKER_SOCKET = Path("/var/run/docker.sock")
PODMAN_ROOT_SOCKET = Path("/run/podman/podman.sock")
DOCKERD_ARGS = ["--iptables=false", "--bridge=none", "--storage-driver=overlay2"]
DOCKERD_LOG = Path("/var/log/assembler-dockerd.log")
START_TIMEOUT = 60.0
API_TIMEOUT = 600
TAIL_LINES = 20

HOW_TO_START = (
    "start an engine: `systemctl start docker`, or `dockerd " + " ".join(DOCKERD_ARGS) + " &`, "
    "or `podman system service --time=0 unix:///run/podman/podman.sock &` "
    "(and point DOCKER_HOST at the socket you use)"
)


@dataclass(frozen=True)
class EngineInfo:
    name: str  # "docker" or "podman"
    version: str


@dataclass(frozen=True)
class LayerStep:
    """One layer of a built image and the Containerfile instruction that made it."""

    diff_id: str
    created_by: str


# What build_image hands the image its tag named before: drop_superseded, or dropping_alongside()'s.
Drop = Callable[[docker.DockerClient, str], None]


@dataclass(frozen=True)
class BuiltImage:
    id: str  # config digest, sha256:...
    tag: str
    steps: list[LayerStep] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- connect


def connect(*, start: bool = True) -> docker.DockerClient:
    """A client for a live engine: DOCKER_HOST if set, else the usual Docker/Podman sockets.

    With nothing configured and nothing answering, start dockerd in the background when `start` is true.
    A DOCKER_HOST that does not answer is an error: silently using another engine would surprise.
    """
    host = os.environ.get("DOCKER_HOST")
    if host:
        client = _try_client(host)
        if client is None:
            raise EngineError(f"the container engine at DOCKER_HOST={host} does not answer",
                              resolution=f"{HOW_TO_START}; or unset DOCKER_HOST")
        return client
    for socket in _candidate_sockets():
        if socket.exists() and (client := _try_client(f"unix://{socket}")) is not None:
            return client
    if not start:
        raise EngineError("no container engine is running", details=_tried(), resolution=HOW_TO_START)
    return _start_dockerd()


def _candidate_sockets() -> list[Path]:
    sockets = [DOCKER_SOCKET, PODMAN_ROOT_SOCKET]
    if runtime_dir := os.environ.get("XDG_RUNTIME_DIR"):
        sockets.append(Path(runtime_dir) / "podman" / "podman.sock")
    return sockets


def _tried() -> str:
    return "tried: " + ", ".join(str(s) for s in _candidate_sockets())


def _try_client(base_url: str) -> docker.DockerClient | None:
    try:
        # For DOCKER_HOST, from_env also honours DOCKER_TLS_VERIFY / DOCKER_CERT_PATH.
        client = (docker.from_env(timeout=API_TIMEOUT) if base_url == os.environ.get("DOCKER_HOST")
                  else docker.DockerClient(base_url=base_url, timeout=API_TIMEOUT))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        log.debug("engine at %s does not answer: %s", base_url, exc)
        return None
    return client


def _start_dockerd() -> docker.DockerClient:
    """Start dockerd in the background (outliving assembler: the user's engine) and wait until it answers."""
    dockerd = require_tool("dockerd", hint="no container engine is running and dockerd is not installed")
    log.info("no container engine answers; starting %s (log: %s)", " ".join(["dockerd", *DOCKERD_ARGS]),
             DOCKERD_LOG)
    with DOCKERD_LOG.open("ab") as logfile:
        spawn([dockerd, *DOCKERD_ARGS], output=logfile, tied=False, new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if DOCKER_SOCKET.exists() and (client := _try_client(f"unix://{DOCKER_SOCKET}")) is not None:
            return client
        time.sleep(0.5)
    raise EngineError(f"dockerd did not answer within {START_TIMEOUT:.0f} s", details=_log_tail(DOCKERD_LOG),
                      resolution=f"read {DOCKERD_LOG}; {HOW_TO_START}")


def _log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def engine_info(client: docker.DockerClient) -> EngineInfo:
    version = client.version()
    names = " ".join(str(c.get("Name", "")) for c in version.get("Components", []))
    name = "podman" if "podman" in names.lower() else "docker"
    return EngineInfo(name=name, version=str(version.get("Version", "unknown")))


# ----------------------------------------------------------------------------------------------- build

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # the engine colours RUN stderr
_STEP_RE = re.compile(r"^(?:\[\d+/\d+\] )?STEP \d+(?:/\d+)?\s*:\s*(.*)$", re.IGNORECASE)


def is_step_header(line: str) -> bool:
    """A build's step header: Docker's "Step 3/9 : RUN ...", Podman's "[1/2] STEP 3/9: RUN ..."."""
    return _STEP_RE.match(line.strip()) is not None


def build_image(
    client: docker.DockerClient,
    context: Path,
    *,
    containerfile: str = "Containerfile",
    tag: str,
    buildargs: Mapping[str, str],
    nocache: bool = False,
    on_output: Callable[[str], None] | None = None,
    redact: Callable[[str], str] = str,
    drop: Drop | None = None,
    platform: str | None = None,
) -> BuiltImage:
    """Build context/containerfile, stream its output to on_output, return the image and its layers.

    Every line of output (and of an error) passes through `redact` first: the build's secret values never
    reach a log or an error message, whatever a RUN step prints. The image the tag named before is handed to
    `drop` (default: drop_superseded, here and now)."""
    if not (context / containerfile).is_file():
        raise ConfigError(f"Containerfile not found: {context / containerfile}",
                          resolution="create it, or pass the directory that holds it")
    previous = image_id(client, tag)
    stream = _build_stream(client, context, containerfile, tag, dict(buildargs), nocache, platform)
    reported = _consume(stream, on_output or (lambda _line: None), redact)
    full_id = image_id(client, reported)  # the stream may only give a short ID
    if full_id is None:
        raise EngineError(f"the build reported image {reported}, which the engine does not have",
                          resolution="rerun the build; check the engine's log")
    if previous is not None and previous != full_id:
        (drop or drop_superseded)(client, previous)
    return BuiltImage(id=full_id, tag=tag, steps=image_steps(client, full_id))


def drop_superseded(client: docker.DockerClient, previous: str) -> None:
    """Remove the image a tag named before it moved, when nothing else names it.

    Each rebuild of an image would otherwise leave the last one untagged in the engine: a few hundred MB to a
    GB a build, unreachable by any name, until someone prunes by hand. Its untagged parents (the classic
    builder's step images and a replaced base) go with it unless another image still builds on them. An image
    still tagged elsewhere, used by a container, or the base of another image stays where it is."""
    try:
        tags = [t for t in client.api.inspect_image(previous).get("RepoTags") or [] if t != "<none>:<none>"]
        if tags:
            return
        client.api.remove_image(previous, noprune=False)
        log.debug("removed superseded image %s", previous)
    except docker.errors.APIError as exc:  # in use, or gone already: nothing of ours to reclaim
        log.debug("kept superseded image %s: %s", previous, exc)


@contextmanager
def pinned(client: docker.DockerClient, image: str, repository: str) -> Iterator[bool]:
    """A private tag on `image` while the block runs, so that drop_superseded() in a concurrent build of the
    same name (which moves the shared tag away from it) leaves it in place; False when the engine no longer
    has the image (the caller builds it again). The tag goes afterwards; the image stays while a tag or a
    child image (the one just built on it) still needs it."""
    tag = f"in-use-{os.urandom(6).hex()}"
    try:
        client.api.tag(image, repository, tag)
    except docker.errors.APIError as exc:  # NotFound: superseded and removed since it was looked up
        log.debug("could not pin %s: %s", image, exc)
        yield False
        return
    try:
        yield True
    finally:
        try:
            client.api.remove_image(f"{repository}:{tag}", noprune=True)
        except docker.errors.APIError as exc:  # the engine went away: a stray tag, nothing worse
            log.debug("could not unpin %s: %s", image, exc)


@contextmanager
def pinned_fresh(client: docker.DockerClient, lookup: Callable[[], T], image_of: Callable[[T], str],
                 repository: str, what: str) -> Iterator[T]:
    """lookup() (which loads or builds the image when the engine lacks it), its image pinned while the block
    runs; looked up again when the image left the engine between the two (a concurrent build superseded it)."""
    for _ in range(PIN_ATTEMPTS):
        found = lookup()
        with pinned(client, image_of(found), repository) as kept:
            if kept:
                yield found
                return
        log.info("%s (%s) left the engine before it was pinned: looking again", what, image_of(found)[:19])
    raise EngineError(f"{what} keeps leaving the engine before this build can start on it",
                      resolution="other builds on this engine are replacing it over and over: run this build "
                                 "again once they are done")


@contextmanager
def dropping_alongside() -> Iterator[Drop]:
    """A `drop` for build_image that removes the superseded image on a thread of its own while the caller goes
    on (saving and flattening the new one), and waits for it on leaving, so no run ends with it forgotten.

    Removing a few hundred MB of layer files takes the engine 1-2 s; the thread has its own connection (one
    docker client is not shared between threads)."""
    threads: list[threading.Thread] = []

    def drop(client: docker.DockerClient, previous: str) -> None:
        del client  # the caller's connection stays with the caller's thread
        thread = threading.Thread(target=_drop_on_own_connection, args=(previous,), name="drop-superseded")
        thread.start()
        threads.append(thread)

    try:
        yield drop
    finally:
        for thread in threads:
            thread.join()


def _drop_on_own_connection(previous: str) -> None:
    try:
        client = connect(start=False)
    except EngineError as exc:  # the engine went away: nothing to reclaim from here
        log.debug("kept superseded image %s: %s", previous, exc.brief)
        return
    try:
        drop_superseded(client, previous)
    except requests.exceptions.RequestException as exc:
        log.debug("kept superseded image %s: %s", previous, exc)
    finally:
        client.close()


def _build_stream(client: docker.DockerClient, context: Path, containerfile: str, tag: str,
                  buildargs: dict[str, str], nocache: bool, platform: str | None = None) -> Iterator[dict[str, Any]]:
    # `platform` (linux/arm64): the image's RUN steps run foreign binaries through binfmt and qemu-user.
    try:
        stream: Iterator[dict[str, Any]] = client.api.build(
            path=str(context), dockerfile=containerfile, tag=tag, buildargs=buildargs, nocache=nocache,
            network_mode="host", decode=True, rm=True, forcerm=True, pull=False,
            **({"platform": platform} if platform else {}),
        )
        yield from stream
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise EngineError(f"the engine refused the build of {context / containerfile}", details=str(exc),
                          resolution="check the Containerfile syntax and that the engine is healthy") from exc


def _consume(stream: Iterator[dict[str, Any]], on_output: Callable[[str], None],
             redact: Callable[[str], str] = str) -> str:
    """Follow the build's JSON stream; return the image ID or raise with the failing step."""
    step, tail, found = "", deque[str](maxlen=TAIL_LINES), ""
    for chunk in stream:
        if "error" in chunk:
            raise EngineError(f"build failed at step: {step or '(before the first step)'}",
                              details="\n".join([*tail, redact(str(chunk["error"]).strip())]),
                              resolution="fix the failing instruction in the Containerfile (output above)")
        if aux := chunk.get("aux"):
            found = str(aux.get("ID", found))
        for line in redact(_ANSI_RE.sub("", str(chunk.get("stream", "")))).splitlines():
            on_output(line)
            tail.append(line)
            if match := _STEP_RE.match(line.strip()):
                step = match.group(1)
            elif match := re.match(r"^Successfully built ([0-9a-f]{12,64})$", line.strip()):
                found = found or match.group(1)
    if not found:
        raise EngineError("the build finished without reporting an image ID", details="\n".join(tail),
                          resolution="rerun with --debug; check the engine's log")
    return found


def image_steps(client: docker.DockerClient, image: str) -> list[LayerStep]:
    """Pair each layer (diff_id) with the history entry that created it.

    The history API does not say which entries are empty layers; metadata-only instructions are recorded
    as `#(nop)` by both Docker and Buildah, except COPY/ADD which do make layers.
    """
    diff_ids = list(client.api.inspect_image(image)["RootFS"].get("Layers") or [])
    history = list(reversed(client.api.history(image)))  # the API lists newest first
    creators = [str(h.get("CreatedBy", "")) for h in history if _makes_layer(h)]
    if len(creators) != len(diff_ids):
        log.debug("history has %d layer entries for %d layers; aligning from the top", len(creators),
                  len(diff_ids))
        creators = ([""] * len(diff_ids) + creators)[-len(diff_ids):] if diff_ids else []
    return [LayerStep(diff_id=d, created_by=c) for d, c in zip(diff_ids, creators, strict=True)]


def _makes_layer(entry: Mapping[str, Any]) -> bool:
    created_by = str(entry.get("CreatedBy", ""))
    if int(entry.get("Size", 0) or 0) > 0:
        return True
    if "#(nop)" not in created_by:
        return True
    return bool(re.search(r"#\(nop\)\s+(COPY|ADD)\b", created_by))


# ----------------------------------------------------------------------------------- images and archives


def image_id(client: docker.DockerClient, ref: str) -> str | None:
    """The image ID a reference resolves to, or None when the engine does not have it."""
    try:
        return str(client.api.inspect_image(ref)["Id"])
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        if exc.status_code == 404:
            return None
        raise EngineError(f"cannot inspect image {ref}", details=str(exc)) from exc


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    return image_id(client, ref) is not None


def remove_image(client: docker.DockerClient, ref: str, *, force: bool = False) -> None:
    """Remove an image (no error when it is already gone)."""
    try:
        client.api.remove_image(ref, force=force, noprune=False)
    except docker.errors.ImageNotFound:
        return
    except docker.errors.APIError as exc:
        if exc.status_code == 404:
            return
        raise EngineError(f"cannot remove image {ref}", details=str(exc),
                          resolution="remove the containers that use it, or pass force") from exc


def save_image(client: docker.DockerClient, image: str, dest: Path) -> Path:
    """Stream `docker save` of one image into dest (docker-archive tar), written atomically."""
    try:
        with atomic_path(dest) as tmp, tmp.open("wb") as out:
            for chunk in client.api.get_image(image, chunk_size=1 << 20):
                out.write(chunk)
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise EngineError(f"cannot save image {image}", details=str(exc),
                          resolution="check that the image exists (`docker images`)") from exc
    return dest


def load_archive(client: docker.DockerClient, archive: Path) -> str:
    """Load a docker-archive into the engine; return the loaded image's ID."""
    try:
        with archive.open("rb") as data:
            messages = list(client.api.load_image(data))
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise EngineError(f"the engine could not load {archive}", details=str(exc),
                          resolution="check that the file is a docker-archive (`tar tf` shows manifest.json)"
                          ) from exc
    return _loaded_id(client, messages, archive)


def _loaded_id(client: docker.DockerClient, messages: list[dict[str, Any]], archive: Path) -> str:
    loaded: list[str] = []
    for message in messages:
        if "error" in message:
            raise EngineError(f"the engine could not load {archive}", details=str(message["error"]))
        for line in str(message.get("stream", "")).splitlines():
            if match := re.match(r"^Loaded image(?: ID)?: (\S+)", line.strip()):
                loaded.append(match.group(1))
    for ref in reversed(loaded):
        if ref_id := image_id(client, ref):
            return ref_id
    raise EngineError(f"the engine loaded {archive} but did not report the image", details=str(messages),
                      resolution="load it by hand (`docker load -i FILE`) to see the engine's message")


def run_in_container(client: docker.DockerClient, image: str, command: list[str]) -> str:
    """Run a command in a throw-away container (host network) and return its output.

    For tooling around builds (e.g. resolving package pins in the base image), not for building images.
    """
    try:
        output = client.containers.run(image, command, network_mode="host", remove=True, stdout=True,
                                       stderr=True)
    except docker.errors.ContainerError as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
        raise EngineError(f"command failed in a container of {image} (exit {exc.exit_status})",
                          details="\n".join(stderr.splitlines()[-TAIL_LINES:]),
                          resolution="read the output above") from exc
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise EngineError(f"cannot run a container of {image}", details=str(exc),
                          resolution="check that the image exists and the engine is healthy") from exc
    return output.decode(errors="replace") if isinstance(output, bytes) else str(output)
