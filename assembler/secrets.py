"""Build secrets: values that RUN steps use while the image builds and that are never in the result.

An image declares where each secret comes from (image.yaml `secrets:`, an environment variable or a file of
the machine that builds) and a RUN step asks for it with BuildKit's syntax, which users already know:

    RUN --mount=type=secret,id=netrc,target=/root/.netrc  curl --netrc -fO https://private.example/x
    RUN --mount=type=secret,id=api_token,env=API_TOKEN    ./register.sh

The engines here run the classic builder, which has no secret mounts, so `rewrite()` turns each such RUN into
a plain one that fetches the values from a loopback server of this build (`Server`), uses them, and removes
them before the step's layer is committed: a file made and removed within one step is not in its layer.
What reaches the engine carries no value: the rewritten RUN text is fixed (the layer cache still works) and
the server's port and one-time token travel in `no_proxy`, a predefined build argument that the engine keeps
out of the image history and out of its cache key, and that no HTTP client treats differently for an extra
`.invalid` host. Values are then searched for in the flattened rootfs (`find_in_tar`) and masked in the
build's output (`redact`); the BOM and manifest name the secrets, never their values.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets as _random
import shutil
import socketserver
import tarfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from assembler.config import ImageSpec, SecretSource
from assembler.errors import AssemblerError, ConfigError
from assembler.inputs import sent_to_engine  # the engine SDK's own .dockerignore matcher
from assembler.log import log

SECRETS_DIR = "/run/secrets"
_HOST_PREFIX = "assembler-secret-"
_SCAN_CHUNK = 1 << 20
_MASK = "***"


class SecretLeakError(AssemblerError):
    """A secret's value was found in the built rootfs."""


# ------------------------------------------------------------------------------------------------ values

@dataclass(frozen=True)
class Secret:
    id: str
    source: str  # "env NAME" or "file PATH": for messages, never the value
    value: bytes


@dataclass(frozen=True)
class Prepared:
    context: Path  # the directory to build from: a private copy with the rewritten Containerfile, if any
    values: dict[str, Secret]  # the secrets its RUN steps mount


def prepare(spec: ImageSpec, context: Path, work: Path) -> Prepared:
    """Rewrite the Containerfile's secret mounts (into a private copy of the context) and read their values."""
    name = spec.containerfile.name
    rewritten, used = rewrite((context / name).read_text(), spec.config.secrets, name=name)
    if not used:
        return Prepared(context, {})
    values = load(spec, used)
    if context == spec.context:  # never write into the user's directory
        private = work / "context"
        shutil.rmtree(private, ignore_errors=True)
        shutil.copytree(context, private, symlinks=True)
        context = private
    (context / name).write_text(rewritten)
    return Prepared(context, values)


def load(spec: ImageSpec, ids: Iterable[str]) -> dict[str, Secret]:
    """The values of the named secrets, read now; one error naming each one that is missing or empty."""
    found: dict[str, Secret] = {}
    problems = []
    for sid in sorted(ids):
        source = spec.config.secrets[sid]
        value, where, problem = _read(spec, source)
        if problem:
            problems.append(f"  {sid}: {problem}")
        else:
            found[sid] = Secret(sid, where, value)
    if problems:
        raise ConfigError(f"secrets of {spec.name} are not available", details="\n".join(problems),
                          resolution="export the variables or create the files that image.yaml `secrets:` "
                                     "names, on the machine that builds (never inside the image directory)")
    return found


def _read(spec: ImageSpec, source: SecretSource) -> tuple[bytes, str, str]:
    if source.env is not None:
        text = os.environ.get(source.env)
        if not text:
            return b"", "", f"environment variable {source.env} is not set (or empty)"
        return os.fsencode(text), f"env {source.env}", ""
    assert source.file is not None  # the model requires exactly one of env and file
    path = (spec.context / Path(source.file).expanduser()).resolve()
    if path.is_relative_to(spec.context.resolve()) and _sent_to_engine(spec.context, path):
        return b"", "", (f"file {source.file} is in the build context, so the engine would receive it "
                         "(and COPY could bake it in): move it out, or list it in .dockerignore")
    try:
        value = path.read_bytes()
    except OSError as exc:
        return b"", "", f"file {source.file}: {exc.strerror or exc}"
    if not value:
        return b"", "", f"file {source.file} is empty"
    return value, f"file {source.file}", ""


def _sent_to_engine(context: Path, path: Path) -> bool:
    sent = sent_to_engine(context)
    return sent is None or path.relative_to(context.resolve()).as_posix() in sent


# ------------------------------------------------------------------------------------------- the rewrite

@dataclass(frozen=True)
class Mount:
    id: str
    target: str | None  # a file the value is written to for the step, or None (env only)
    env: str | None
    mode: int


_RUN_RE = re.compile(r"^(\s*RUN)\b", re.IGNORECASE)
_DIRECTIVE_RE = re.compile(r"^#\s*escape\s*=\s*(\S)\s*$", re.IGNORECASE)
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]+$")  # goes into shell text unquoted-safe


def _instructions(text: str) -> Iterator[tuple[int, int]]:
    """(first, last) physical line numbers of each instruction, following the escape character."""
    lines = text.split("\n")
    escape = "\\"
    for line in lines:
        if not line.startswith("#"):
            break
        if match := _DIRECTIVE_RE.match(line):
            escape = match.group(1)
    index = 0
    while index < len(lines):
        first = index
        while lines[index].rstrip().endswith(escape) and index + 1 < len(lines):
            index += 1
            while index + 1 < len(lines) and lines[index].lstrip().startswith("#"):  # comments inside
                index += 1
        yield first, index
        index += 1


def _flags(rest: str) -> tuple[list[str], str]:
    """Leading `--flag=value` words of a RUN and the command after them (continuations count as spaces)."""
    flags: list[str] = []
    while True:
        match = re.match(r"^(?:\s|\\\n)+(--[A-Za-z-]+=\S+)", rest)
        if not match:
            return flags, rest
        flags.append(match.group(1))
        rest = rest[match.end():]


def parse_mount(flag: str, where: str) -> Mount | None:
    """A `--mount=type=secret,...` flag; None for any other flag."""
    name, _, spec = flag.partition("=")
    if name != "--mount":
        return None
    options = dict(item.partition("=")[::2] for item in spec.split(","))
    if options.get("type") != "secret":
        return None
    unknown = set(options) - {"type", "id", "target", "dst", "destination", "env", "required", "mode",
                              "uid", "gid"}
    target = options.get("target") or options.get("dst") or options.get("destination")
    sid = options.get("id") or (PurePosixPath(target).name if target else "")
    env = options.get("env")
    problem = (f"unknown option {sorted(unknown)[0]}" if unknown
               else "no id" if not sid
               else f"env={env} is not a variable name" if env is not None and not _ENV_NAME_RE.match(env)
               else f"target={target} must be an absolute path of letters, digits and ._-/+" if target
               and (not _SAFE_PATH_RE.match(target) or ".." in target.split("/"))
               else f"uid/gid other than 0 are not supported ({flag})" if options.get("uid", "0") != "0"
               or options.get("gid", "0") != "0"
               else f"mode={options['mode']} is not octal" if "mode" in options
               and not re.match(r"^0?[0-7]{3}$", options["mode"])
               else "")
    if problem:
        raise ConfigError(f"{where}: bad secret mount: {problem}",
                          resolution="use --mount=type=secret,id=ID[,target=/abs/path][,env=NAME][,mode=0400]")
    if target is None and env is None:
        target = f"{SECRETS_DIR}/{sid}"
    return Mount(sid, target, env, int(options.get("mode", "0400"), 8))


def rewrite(text: str, declared: Mapping[str, object], *, name: str = "Containerfile") -> tuple[str, list[str]]:
    """The Containerfile with every secret-mounting RUN made classic, and the secret ids it uses (sorted)."""
    lines = text.split("\n")
    used: set[str] = set()
    for first, last in reversed(list(_instructions(text))):
        match = _RUN_RE.match(lines[first])
        if not match:
            continue
        where = f"{name}:{first + 1}"
        instruction = "\n".join(lines[first:last + 1])
        flags, command = _flags(instruction[match.end():])
        mounts = [parse_mount(f, where) for f in flags]
        if not any(mounts):
            continue
        if not all(mounts):
            other = next(f for f, m in zip(flags, mounts, strict=True) if m is None)
            raise ConfigError(f"{where}: {other} cannot be combined with a secret mount here",
                              resolution="the classic builder has only secret mounts through assembler; "
                                         "drop the flag")
        found = [m for m in mounts if m is not None]
        if command.strip().startswith("["):
            raise ConfigError(f"{where}: a secret mount needs the shell form of RUN, not the exec form",
                              resolution='write RUN --mount=... command args, not RUN --mount=... ["command"]')
        for mount in found:
            if mount.id not in declared:
                raise ConfigError(f"{where}: secret {mount.id!r} is not declared",
                                  resolution=f"add it to image.yaml: secrets: {{{mount.id}: {{env: NAME}}}} "
                                             "or {file: PATH}")
            used.add(mount.id)
        lines[first:last + 1] = (match.group(1) + " " + _prelude(found) + command).split("\n")
    return "\n".join(lines), sorted(used)


# Runs in bash (for /dev/tcp): reads this build's endpoint from no_proxy, then for each (id, path) pair asks
# the server for the value and writes it to path (mode 0600 until chmod), failing loudly when it is not served.
_FETCH = (
    'set -e; umask 077; p=; for e in ${no_proxy//,/ }; do case $e in ' + _HOST_PREFIX + '*.invalid) '
    'e=${e#' + _HOST_PREFIX + '}; e=${e%.invalid}; p=${e%%-*}; t=${e#*-};; esac; done; '
    '[ -n "$p" ] || { echo "assembler: no secret server in this build: build with assembler" >&2; exit 1; }; '
    'while [ $# -gt 1 ]; do [ ! -e "$2" ] || { echo "assembler: secret target $2 exists in the image" >&2; '
    'exit 1; }; exec 3<>/dev/tcp/127.0.0.1/$p; printf "%s %s\\n" "$t" "$1" >&3; cat <&3 >"$2"; exec 3<&-; '
    '[ -s "$2" ] || { echo "assembler: secret $1 was not served" >&2; exit 1; }; shift 2; done'
)


def _prelude(mounts: list[Mount]) -> str:
    """Shell text put before the user's command: fetch, expose, and remove on any exit of the step."""
    files = [(m, m.target or f"{SECRETS_DIR}/.env-{m.id}") for m in mounts]
    paths = " ".join(path for _, path in files)
    pairs = " ".join(f"{m.id} {path}" for m, path in files)
    parts = [
        f"[ -d {SECRETS_DIR} ] && __keep=1 || mkdir -p {SECRETS_DIR};",
        f"trap 'rm -f {paths}; [ -n \"${{__keep-}}\" ] || rmdir {SECRETS_DIR} 2>/dev/null || :' EXIT;",
        f"/bin/bash -c '{_FETCH}' assembler-secrets {pairs} || exit 1;",
    ]
    for mount, path in files:
        if mount.env:
            parts.append(f'{mount.env}="$(cat {path})"; export {mount.env};')
            if mount.target is None:
                parts.append(f"rm -f {path};")
        if mount.target:
            parts.append(f"chmod {mount.mode:o} {path};")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------ server

class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.request.settimeout(10)
        try:
            line = self.rfile.readline(512).decode("ascii", "replace").split()
        except OSError:
            return
        if len(line) != 2 or not hmac.compare_digest(line[0], self.server.token):
            log.warning("secret server: refused a request without this build's token")
            return
        secret = self.server.values.get(line[1])
        if secret is None:
            log.warning("secret server: a step asked for undeclared secret %r", line[1][:64])
            return
        self.wfile.write(secret.value)
        self.server.served[secret.id] = self.server.served.get(secret.id, 0) + 1
        log.debug("secret server: served %s", secret.id)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, values: dict[str, Secret]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.values = values
        self.token = _random.token_hex(16)
        self.served: dict[str, int] = {}


@contextmanager
def serving(values: dict[str, Secret]) -> Iterator[tuple[str, dict[str, int]]]:
    """Serve the values on loopback for the build; yields the `no_proxy` entry ('' for no values) and the
    served counts."""
    if not values:
        yield "", {}
        return
    server = _Server(values)
    thread = threading.Thread(target=server.serve_forever, name="secret-server", daemon=True)
    thread.start()
    try:
        yield f"{_HOST_PREFIX}{server.server_address[1]}-{server.token}.invalid", server.served
    finally:
        server.shutdown()
        server.server_close()


def no_proxy_with(existing: str, entry: str) -> str:
    return f"{existing},{entry}" if existing else entry


# ---------------------------------------------------------------------------------------------- checking

def redact(text: str, values: dict[str, Secret]) -> str:
    """`text` with every secret's value (and each of its lines, for multi-line files) masked."""
    for secret in values.values():
        try:
            value = secret.value.decode()
        except UnicodeDecodeError:
            continue
        for part in sorted({value, *value.splitlines()}, key=len, reverse=True):
            if len(part.strip()) >= 4:  # shorter fragments would mask ordinary text
                text = text.replace(part, _MASK)
    return text


def find_in_tar(tar_path: Path, values: dict[str, Secret]) -> list[tuple[str, str]]:
    """(member, secret id) for every file of the tar whose content or link target holds a secret's value."""
    needles = {s.id: s.value.strip() or s.value for s in values.values()}
    longest = max((len(n) for n in needles.values()), default=0)
    hits: list[tuple[str, str]] = []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            data: Iterable[bytes] = ([member.linkname.encode()] if member.issym() or member.islnk()
                                     else _chunks(tar, member) if member.isfile() else [])
            found = {sid for sid, needle in needles.items() if needle in member.name.encode()}
            tail = b""
            for chunk in data:
                window = tail + chunk
                found |= {sid for sid, needle in needles.items() if needle in window}
                tail = window[-(longest - 1):] if longest > 1 else b""
            hits.extend((member.name, sid) for sid in sorted(found))
    return hits


def _chunks(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    handle = tar.extractfile(member)
    if handle is None:
        return
    while chunk := handle.read(_SCAN_CHUNK):
        yield chunk


def require_absent(tar_path: Path, values: dict[str, Secret]) -> None:
    if not values:
        return
    hits = find_in_tar(tar_path, values)
    if hits:
        raise SecretLeakError(
            "a build secret's value is in the image",
            details="\n".join(f"  /{path}: secret {sid}" for path, sid in hits[:20]),
            resolution="use the secret only within the RUN step that mounts it: do not write it (or anything "
                       "derived from it verbatim) to a file that stays")
