"""Base images without a registry: mmdebstrap a Debian rootfs and load it into the engine.

A recipe (rootfs/NAME/recipe.yaml) names the suite, mirror and packages. `bootstrap()` turns it into a
bit-identical rootfs tar (SOURCE_DATE_EPOCH), `base_archive()` wraps that tar as a one-layer
docker-archive whose config is dated by the same epoch (so the image ID is reproducible), and
`ensure_base()` does both, caches the result by recipe key and loads it under the recipe's tag, which
Containerfiles `FROM`. A Containerfile can equally `FROM docker.io/library/debian@sha256:...` on a machine
that reaches a registry; this module is for machines (and builds) that must not depend on one.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
import re
import shlex
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import docker
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assembler import engine, progress
from assembler.errors import AssemblerError, ConfigError
from assembler.fsutil import atomic_dir, atomic_path, canonical_json, sha256_bytes, sha256_file
from assembler.log import log
from assembler.packages import BUILD_ONLY_APT_CONF
from assembler.packages.index import DEBIAN_KEYRING
from assembler.packages.lockfile import IndexFile, LockedPackage, read_lock, write_lock
from assembler.packages.locking import live_session
from assembler.packages.proxy import Session
from assembler.remote import PushResult, RegistryStore, RemoteError
from assembler.run import require_tool, run, tool_version

MIRROR_ENV = "ASSEMBLER_DEBIAN_MIRROR"
SECURITY_MIRROR_ENV = "ASSEMBLER_DEBIAN_SECURITY_MIRROR"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOTFS_DIR = Path(__file__).resolve().parents[2] / "rootfs"
# Bump when the archive layout changes (the mmdebstrap argv is part of the key already).
BOOTSTRAP_VERSION = 3  # 2: fetched through the locking proxy, keyed by the mirror state; 3: build-only apt.conf
BASE_LOCK = "base.lock.json"
LOCK_LABEL = "org.assembler.lock"  # on the loaded base: the digest of the lock the build replays
ETC_HOSTS = r"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\n" \
            r"ff02::2\t\tip6-allrouters\n"

Variant = Literal["extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important",
                  "standard"]


class BaseRecipe(BaseModel):
    """A Debian base bootstrapped by mmdebstrap (rootfs/NAME/recipe.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    suite: str = "bookworm"
    variant: Variant = "minbase"
    architecture: str = "amd64"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str | None = "http://deb.debian.org/debian-security"
    updates: bool = True
    components: tuple[str, ...] = ("main",)
    packages: tuple[str, ...] = ()
    source_date_epoch: int = Field(ge=0)
    tag: str = "localhost/assembler/base:debian-12"
    # Keyrings that sign the archives (absolute, or relative to the recipe file); default: Debian's.
    keyrings: tuple[str, ...] = ()

    def sources(self) -> list[str]:
        """One-line apt sources, in the order mmdebstrap writes them to /etc/apt/sources.list."""
        comps = " ".join(self.components)
        lines = [f"deb {self.mirror} {self.suite} {comps}"]
        if self.updates:
            lines.append(f"deb {self.mirror} {self.suite}-updates {comps}")
        if self.security_mirror:
            lines.append(f"deb {self.security_mirror} {self.suite}-security {comps}")
        return lines


def load_recipe(path_or_name: Path | str) -> BaseRecipe:
    """Read a recipe: a file, a directory holding recipe.yaml, or a bare NAME (rootfs/NAME/recipe.yaml)."""
    path = Path(path_or_name)
    if path.is_dir():
        path = path / "recipe.yaml"
    elif not path.suffix and not path.exists():
        path = ROOTFS_DIR / str(path_or_name) / "recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"base recipe not found: {path}",
                          resolution=f"create it, or pick one of {_known()}")
    try:
        recipe = BaseRecipe.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError) as exc:
        raise ConfigError(f"invalid base recipe {path}", details=str(exc),
                          resolution="fix the fields named above") from exc
    keyrings = tuple(str((path.parent / k).resolve()) for k in recipe.keyrings)
    for keyring in keyrings:
        if not Path(keyring).is_file():
            raise ConfigError(f"the keyring {keyring} named by {path} does not exist",
                              resolution="fix the recipe's `keyrings:`")
    return recipe.model_copy(update={"keyrings": keyrings})


def for_arch(recipe: BaseRecipe, arch: str) -> BaseRecipe:
    """The recipe bootstrapped for `arch` (its maintainer scripts run under qemu-user through binfmt), loaded
    under its own tag: base:debian-12 stays the recipe's own architecture, base:debian-12-arm64 is arm64."""
    if arch == recipe.architecture:
        return recipe
    return recipe.model_copy(update={"architecture": arch, "tag": f"{recipe.tag}-{arch}"})


BINFMT = {"arm64": "qemu-aarch64"}  # binfmt_misc entries (qemu-user-static) that run each foreign arch


def require_emulation(arch: str) -> None:
    """Another architecture's binaries must run here (mmdebstrap's maintainer scripts, the engine's RUN
    steps): a registered, enabled binfmt_misc entry for qemu-user-static, checked before anything starts."""
    if arch not in BINFMT:
        return
    entry = Path("/proc/sys/fs/binfmt_misc") / BINFMT[arch]
    try:
        enabled = entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        enabled = False
    if not enabled:
        raise ConfigError(f"this machine cannot run {arch} binaries: {entry} is not an enabled binfmt_misc entry",
                          details="an arm64 build runs the image's package scripts and RUN steps under qemu-user",
                          resolution="run scripts/setup.sh (installs qemu-user-static, binfmt-support and "
                                     "arch-test, mounts binfmt_misc, registers qemu-aarch64)")


def _known() -> list[str]:
    return sorted(p.parent.name for p in ROOTFS_DIR.glob("*/recipe.yaml"))


def effective(recipe: BaseRecipe) -> BaseRecipe:
    """Apply the mirror overrides from the environment (a local mirror or a snapshot.debian.org URL)."""
    update: dict[str, str] = {}
    if os.environ.get(MIRROR_ENV):
        update["mirror"] = os.environ[MIRROR_ENV]
    if os.environ.get(SECURITY_MIRROR_ENV):
        update["security_mirror"] = os.environ[SECURITY_MIRROR_ENV]
    return recipe.model_copy(update=update) if update else recipe


def recipe_key(recipe: BaseRecipe, state: list[IndexFile] | None = None) -> str:
    """Cache key: the recipe as used, the mirror state it is bootstrapped from (the signed InRelease files
    by digest) and the mmdebstrap version that turns both into a tar."""
    data = {
        "recipe": effective(recipe).model_dump(mode="json"),
        "keyrings": [sha256_file(k) for k in recipe_keyrings(recipe)],
        "state": sorted(f"{i.url} {i.sha256}" for i in state or []),
        "mmdebstrap": tool_version("mmdebstrap"),
        "argv": mmdebstrap_command(effective(recipe), Path("OUTPUT")),
        "bootstrap_version": BOOTSTRAP_VERSION,
    }
    return sha256_bytes(canonical_json(data))


def recipe_keyrings(recipe: BaseRecipe) -> list[Path]:
    """The OpenPGP keyrings that sign the recipe's archives (Debian's own when the recipe names none)."""
    return [Path(k) for k in recipe.keyrings] or [DEBIAN_KEYRING]


def inrelease_urls(recipe: BaseRecipe) -> list[str]:
    """The signed index of every suite the recipe's sources name (what pins its mirror state)."""
    return [f"{line.split()[-3]}/dists/{line.split()[-2]}/InRelease" for line in recipe.sources()]


def mmdebstrap_command(recipe: BaseRecipe, dest: Path) -> list[str]:
    """The exact mmdebstrap argv (golden-testable)."""
    cmd = [
        "mmdebstrap",
        f"--variant={recipe.variant}",
        f"--architectures={recipe.architecture}",
        f"--components={','.join(recipe.components)}",
        "--format=tar",
        # mmdebstrap copies the host's resolv.conf and hostname; either would make the tar host-dependent.
        '--customize-hook=rm -f "$1/etc/resolv.conf"',
        '--customize-hook=echo localhost > "$1/etc/hostname" && chmod 0644 "$1/etc/hostname"',
        # Debian's installer writes /etc/hosts, mmdebstrap does not; without it `localhost` does not resolve
        # on the booted machine. Containerfile RUN steps cannot write it (the engine bind-mounts it).
        f"--customize-hook=printf '{ETC_HOSTS}' > \"$1/etc/hosts\"",
    ]
    # A replayed lock (or a snapshot) carries InRelease files whose Valid-Until has passed; the session checks
    # the freshness of today's state itself. mmdebstrap keeps --aptopt in 99mmdebstrap: renamed to the
    # build-only file that RUN steps read and the flattener drops.
    cmd += ["--aptopt=Acquire::Check-Valid-Until \"false\"",
            f'--customize-hook=mv "$1/etc/apt/apt.conf.d/99mmdebstrap" "$1/{BUILD_ONLY_APT_CONF}"']
    for keyring in recipe.keyrings:
        # Trusted by the bootstrap's apt and, copied in, by the image's apt (RUN steps verify the same archive).
        cmd += [f"--keyring={keyring}",
                f'--customize-hook=mkdir -p "$1/etc/apt/trusted.gpg.d" && '
                f'install -m 0644 {shlex.quote(keyring)} "$1/etc/apt/trusted.gpg.d/"']
    if recipe.packages:
        cmd.append(f"--include={','.join(recipe.packages)}")
    cmd += [recipe.suite, str(dest), *recipe.sources()]
    return cmd


def bootstrap(recipe: BaseRecipe, dest_tar: Path, proxy_url: str) -> Path:
    """Bootstrap the recipe into a reproducible rootfs tar at dest_tar (written atomically).

    apt fetches through the build's locking proxy (http_proxy in its environment only: mmdebstrap would
    write an --aptopt into the image).
    """
    require_tool("mmdebstrap", hint="needed to bootstrap the base image from a Debian mirror")
    recipe = effective(recipe)
    with atomic_path(dest_tar) as tmp, tempfile.TemporaryDirectory(prefix="assembler-keyrings-") as keys:
        # apt verifies as the unprivileged _apt user: the keyrings must be readable from where they are.
        os.chmod(keys, 0o755)
        readable = []
        for keyring in recipe.keyrings:
            copy = Path(keys) / Path(keyring).name
            shutil.copyfile(keyring, copy)
            copy.chmod(0o644)
            readable.append(str(copy))
        run(
            mmdebstrap_command(recipe.model_copy(update={"keyrings": tuple(readable)}), tmp),
            env={"SOURCE_DATE_EPOCH": str(recipe.source_date_epoch), "LC_ALL": "C.UTF-8",
                 "http_proxy": proxy_url, "HTTP_PROXY": "", "https_proxy": "", "no_proxy": ""},
            resolution=f"check that the mirror {recipe.mirror} is reachable (or set {MIRROR_ENV}); "
                       "the apt proxy's refusals are logged above",
        )
    return dest_tar


def _rfc3339(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _image_config(diff_id: str, created_epoch: int, created_by: str, architecture: str) -> bytes:
    created = _rfc3339(created_epoch)
    config = {
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": {"Env": [DEFAULT_PATH], "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": created_by}],
    }
    return canonical_json(config)


def _tar_member(name: str, size: int, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, epoch, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def base_archive(
    rootfs_tar: Path, ref: str, created_epoch: int, dest: Path, *, created_by: str = "assembler bootstrap",
    architecture: str = "amd64",
) -> str:
    """Write a one-layer docker-archive of rootfs_tar tagged `ref`; return its image ID (sha256:...).

    Every byte is a function of the inputs (fixed member order, times and owners), so the archive and the
    image ID are reproducible.
    """
    diff_id = "sha256:" + sha256_file(rootfs_tar)
    config = _image_config(diff_id, created_epoch, created_by, architecture)
    config_hex = sha256_bytes(config)
    layer_name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    manifest = canonical_json([{"Config": f"{config_hex}.json", "RepoTags": [ref], "Layers": [layer_name]}])
    with atomic_path(dest) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        out.addfile(_tar_member(f"{config_hex}.json", len(config), created_epoch), io.BytesIO(config))
        with rootfs_tar.open("rb") as layer:
            out.addfile(_tar_member(layer_name, rootfs_tar.stat().st_size, created_epoch), layer)
        out.addfile(_tar_member("manifest.json", len(manifest), created_epoch), io.BytesIO(manifest))
    return f"sha256:{config_hex}"


@dataclass(frozen=True)
class BaseImage:
    """A loaded base and what it was bootstrapped from (its part of the image's lock)."""

    image_id: str  # the bootstrapped image's ID, without the engine-cache label
    packages: list[LockedPackage]
    indexes: list[IndexFile]
    key: str  # its entry under <cache>/base/ (and tag base-KEY in a registry store)
    engine_image: str = ""  # what the engine holds under the recipe's tag for this build (labelled or not)


def _labelled_config(src: tarfile.TarFile, labels: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    manifest = json.loads(_member_bytes(src, "manifest.json"))[0]
    config = json.loads(_member_bytes(src, manifest["Config"]))
    config["config"]["Labels"] = dict(sorted(labels.items()))
    return manifest, canonical_json(config)


def labelled_image_id(source: Path, labels: dict[str, str]) -> str:
    """The image ID labelled_archive() would give, from the config alone (no copy of the layer)."""
    with tarfile.open(source) as src:
        return f"sha256:{sha256_bytes(_labelled_config(src, labels)[1])}"


def labelled_archive(source: Path, dest: Path, labels: dict[str, str]) -> str:
    """A copy of a one-layer docker-archive whose config carries `labels`; returns its image ID.

    Same layer (the engine stores it once), another image ID: RUN steps cached on top of one label are
    never reused on top of another.
    """
    with tarfile.open(source) as src:
        manifest, data = _labelled_config(src, labels)
        name = f"{sha256_bytes(data)}.json"
        layer = src.getmember(manifest["Layers"][0])
        out_manifest = canonical_json([{**manifest, "Config": name}])
        epoch = int(layer.mtime)
        with atomic_path(dest) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
            out.addfile(_tar_member(name, len(data), epoch), io.BytesIO(data))
            out.addfile(_tar_member(layer.name, layer.size, epoch), src.extractfile(layer))
            out.addfile(_tar_member("manifest.json", len(out_manifest), epoch), io.BytesIO(out_manifest))
    return f"sha256:{sha256_bytes(data)}"


def _member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    handle = tar.extractfile(name)
    if handle is None:
        raise ConfigError(f"{name} is missing from the base archive", resolution="delete the base cache entry")
    return handle.read()


def ensure_base(client: docker.DockerClient, recipe: BaseRecipe, cache_dir: Path,
                session: Session | None = None, *, label: str | None = None,
                cache_from: RegistryStore | None = None, cache_to: RegistryStore | None = None) -> BaseImage:
    """Make sure the engine has the recipe's base image under recipe.tag.

    The base is keyed by the recipe and the mirror state the session pins (the lock's when it replays one,
    today's otherwise); the bootstrap runs only when no cache entry exists for that key, and fetches every
    .deb through the session. Loading runs only when the engine lacks that exact image under the tag.
    With registry stores the entry is pulled (verified) before bootstrapping, and pushed once present.
    """
    recipe = effective(recipe)
    if session is None:
        with live_session(recipe.name, cache_dir, recipe_keyrings(recipe)).serving() as live:
            return ensure_base(client, recipe, cache_dir, live, label=label, cache_from=cache_from,
                               cache_to=cache_to)
    session.layer = "base"
    state = session.state(inrelease_urls(recipe))
    key = recipe_key(recipe, state)
    entry = cache_dir / "base" / key
    # Two builds sharing a cache (CI workers, a user's parallel builds) bootstrap a base once: the second waits
    # for the first and then finds the entry, instead of bootstrapping again and swapping it under the first.
    with _entry_lock(entry):
        if not _complete(entry) and (cache_from is None or not _pull_entry(cache_from, key, entry)):
            session.prefetch("base")
            _build_entry(recipe, entry, session)
    if cache_to is not None:
        push_base(cache_to, key, cache_dir)
    bootstrapped = (entry / "image-id").read_text().strip()
    base_lock = read_lock(entry / BASE_LOCK)
    # What the base *is* (manifest, BOM) is the bootstrapped image: the label only scopes the engine's layer
    # cache to one lock, so a default build that re-resolved and a later replay of its lock record one base.
    labels = {LOCK_LABEL: label} if label is not None else None
    image_id = labelled_image_id(entry / "image.tar", labels) if labels else bootstrapped
    base = BaseImage(bootstrapped, list(base_lock.packages), list(base_lock.indexes), key, image_id)
    previous = engine.image_id(client, recipe.tag)
    if previous == image_id:
        log.debug("base %s already loaded as %s", recipe.tag, image_id)
        return base
    with tempfile.TemporaryDirectory(prefix=".load-", dir=entry.parent) as tmp:
        archive = entry / "image.tar"
        if labels:  # written only when the engine lacks it: a copy of the whole layer
            archive = Path(tmp) / "image.tar"
            labelled_archive(entry / "image.tar", archive, labels)
        loaded = engine.load_archive(client, archive)
    if loaded != image_id:
        log.warning("engine reports image %s for %s, expected %s", loaded, recipe.tag, image_id)
    if previous is not None and previous != loaded:
        engine.drop_superseded(client, previous)  # stays while an image built on it or a pin names it
    return replace(base, engine_image=loaded)


def _complete(entry: Path) -> bool:
    return (entry / "image-id").is_file() and (entry / BASE_LOCK).is_file()


@contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    """An exclusive lock on <cache>/base/.KEY.lock while the entry is looked at and, when missing, made."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with entry.with_name(f".{entry.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _remote_tag(key: str) -> str:
    return f"base-{key}"  # beside the phase entries (tag = phase key) in one registry repository


def _pull_entry(remote: RegistryStore, key: str, entry: Path) -> bool:
    try:
        with atomic_dir(entry) as tmp:
            if remote.pull(_remote_tag(key), tmp) is None:
                raise _NotThere
            if not (tmp / "image-id").is_file() or not (tmp / BASE_LOCK).is_file():
                raise RemoteError(f"{remote.name}:{_remote_tag(key)[:17]} lacks image-id or {BASE_LOCK}")
    except _NotThere:
        return False
    except AssemblerError as exc:
        log.warning("base %s from %s refused: %s; bootstrapping it here", key[:12], remote.name, exc.brief)
        return False
    log.info("base %s pulled from %s", key[:12], remote.name)
    return True


def push_base(remote: RegistryStore, key: str, cache_dir: Path) -> None:
    """Share the base entry `key` (when this cache has it) through the registry store."""
    if not re.fullmatch(r"[0-9a-f]{64}", key):  # read from an entry's metadata, maybe a pulled one
        return
    entry = cache_dir / "base" / key
    if not (entry / "image-id").is_file() or not (entry / BASE_LOCK).is_file():
        return
    with tempfile.TemporaryDirectory(prefix=".push-", dir=entry.parent) as scratch:
        pushed = remote.push(_remote_tag(key), entry, {"phase": "base", "key": _remote_tag(key)}, Path(scratch))
    if pushed.result is PushResult.CONFLICT:
        log.error("reproducibility failure: base %s in %s differs: %s", key[:12], remote.name,
                  "; ".join(pushed.differences))
    else:
        log.info("base %s %s: %s", key[:12], pushed.result.value, remote.name)


class _NotThere(Exception):
    pass


def _build_entry(recipe: BaseRecipe, entry: Path, session: Session) -> None:
    log.info("bootstrapping base %s (%s %s from %s)", recipe.name, recipe.suite, recipe.variant,
             recipe.mirror)
    progress.stage(f"bootstrapping the base {recipe.name} (mmdebstrap)")
    with atomic_dir(entry) as tmp:
        rootfs = bootstrap(recipe, tmp / "rootfs.tar", session.proxy_url)
        foreign = "" if recipe.architecture == "amd64" else f" --architectures={recipe.architecture}"
        created_by = f"mmdebstrap --variant={recipe.variant}{foreign} {recipe.suite} # assembler base {recipe.name}"
        image_id = base_archive(rootfs, recipe.tag, recipe.source_date_epoch, tmp / "image.tar",
                                created_by=created_by, architecture=recipe.architecture)
        rootfs.unlink()  # the archive holds the same bytes as its only layer
        (tmp / "image-id").write_text(image_id + "\n")
        (tmp / "recipe.json").write_text(json.dumps(recipe.model_dump(mode="json"), indent=2) + "\n")
        # What the bootstrap fetched: the base's part of every image lock built on this entry.
        write_lock(tmp / BASE_LOCK, session.served_lock())
