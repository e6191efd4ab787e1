"""Build inputs: everything besides the network that recreates an image, small enough to ride in its BOM.

`build_inputs(spec)` collects the build context (every file of the image directory: Containerfile,
image.yaml, checks.yaml, image.lock.json, downloads.yaml, files/, ... with modes), the base recipe, the
build args, SOURCE_DATE_EPOCH and the download pins, as a JSON-ready dict with sorted lists and no
timestamps. `restore_context()` writes the context back byte for byte; `restore_recipe()` writes the
recipe into a rootfs directory (what ASSEMBLER_ROOTFS_DIR points at). Downloads are pinned by sha256 and
fetched (or taken from the cache) again; the recorded context never carries them.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path, PurePosixPath
from typing import Any

from docker.utils.build import exclude_paths

from assembler.config import ARCHES, NATIVE_ARCH, ImageSpec, rootfs_dir
from assembler.errors import ConfigError
from assembler.packages.lockfile import lock_name
from assembler.rootfs import bootstrap
from assembler.rootfs.context import base_reference
from assembler.rootfs.downloads import DOWNLOADS_DIR, DOWNLOADS_FILE, load_downloads

INPUTS_FORMAT = 1
# The BOM is embedded in the disk and read by people: a context is source files, not payloads.
MAX_CONTEXT_BYTES = 1 << 20


def _entry(root: Path, path: Path) -> dict[str, Any]:
    rel = path.relative_to(root).as_posix()
    if path.is_symlink():
        return {"path": rel, "type": "symlink", "target": os.readlink(path)}
    mode = f"{path.stat().st_mode & 0o7777:04o}"
    if path.is_dir():
        return {"path": rel, "type": "dir", "mode": mode}
    data = path.read_bytes()
    try:
        return {"path": rel, "type": "file", "mode": mode, "text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path": rel, "type": "file", "mode": mode, "base64": base64.b64encode(data).decode()}


def sent_to_engine(context: Path, containerfile: str = "Containerfile") -> set[str] | None:
    """The paths the engine receives after `.dockerignore` (the engine SDK's own matcher), or None (all)."""
    ignore = context / ".dockerignore"
    if not ignore.is_file():
        return None
    patterns = [line.strip() for line in ignore.read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    return {PurePosixPath(p).as_posix() for p in exclude_paths(str(context), patterns, dockerfile=containerfile)}


def context_files(context: Path, *, limit: int = MAX_CONTEXT_BYTES,
                  containerfile: str = "Containerfile") -> list[dict[str, Any]]:
    """Every entry of the build context the engine sees, sorted by path: what `.dockerignore` keeps from the
    build (a `.env`, credentials) never reaches the BOM either; downloads/ is left out when downloads.yaml
    pins it."""
    pinned = (context / DOWNLOADS_FILE).is_file()
    sent = sent_to_engine(context, containerfile)
    entries: list[dict[str, Any]] = []
    total = 0
    for path in sorted(context.rglob("*")):
        rel = path.relative_to(context)
        if pinned and rel.parts[0] == DOWNLOADS_DIR:
            continue  # the rootfs phase replaces it with the verified pins
        if sent is not None and rel.as_posix() not in sent:
            continue
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            if total > limit:
                raise ConfigError(
                    f"the build context {context} is over {limit >> 10} KiB: too large to embed in the BOM",
                    details=f"reached at {rel.as_posix()} ({path.stat().st_size} bytes)",
                    resolution=f"pin large files in {DOWNLOADS_FILE} (url + sha256) instead of keeping them "
                               "in the image directory")
        entries.append(_entry(context, path))
    return entries


def _recipe(spec: ImageSpec) -> dict[str, Any] | None:
    """The base recipe: the declared one (image.yaml base:), else the recipe whose tag the FROM names."""
    if spec.config.base:
        path = rootfs_dir() / spec.config.base / "recipe.yaml"
        return {"name": spec.config.base, "declared": True, "recipe": path.read_text()}
    wanted = base_reference(spec.containerfile)
    for path in sorted(rootfs_dir().glob("*/recipe.yaml")):
        try:
            recipe = bootstrap.load_recipe(path)
        except ConfigError:
            continue
        if wanted and recipe.tag == wanted:
            return {"name": path.parent.name, "declared": False, "recipe": path.read_text()}
    return None


def other_locks(arch: str) -> tuple[str, ...]:
    """The committed locks of the other architectures in an image directory: no input of an `arch` build."""
    return tuple(lock_name(a) for a in ARCHES if a != arch)


def build_inputs(spec: ImageSpec, *, limit: int = MAX_CONTEXT_BYTES, lock: Path | None = None,
                 parent: dict[str, Any] | None = None) -> dict[str, Any]:
    """What recreates the image besides the network: context, base recipe, args, epoch, download pins.

    `lock` is the effective lock of the build: it replaces the committed one (which may have been stale and
    re-resolved), so a rebuild from the BOM installs what this image holds. `parent`: the build inputs of the
    image this one starts FROM (assembler/NAME), restored beside it by a rebuild.
    """
    context = context_files(spec.context, limit=limit,
                            containerfile=spec.containerfile.relative_to(spec.context).as_posix())
    context = [e for e in context if e["path"] not in other_locks(spec.arch)]  # no input of this build
    if lock is not None:
        name = lock_name(spec.arch)
        context = sorted([e for e in context if e["path"] != name]
                         + [{"path": name, "type": "file", "mode": "0644", "text": lock.read_text()}],
                         key=lambda e: str(e["path"]))
    return {
        "format": INPUTS_FORMAT,
        "image": spec.context.name,  # the directory: an arm64 build of debian-12 is named debian-12-arm64
        "containerfile": spec.containerfile.relative_to(spec.context).as_posix(),
        "source_date_epoch": spec.config.source_date_epoch,
        "build_args": dict(sorted(spec.config.build_args.items())),
        "base": _recipe(spec),
        "downloads": [d.model_dump(mode="json", exclude_none=True) for d in
                      sorted(load_downloads(spec.context / DOWNLOADS_FILE, spec.arch),
                             key=lambda d: (d.dest, d.name))],
        "context": context,
        **({"parent": parent} if parent is not None else {}),
        **({"arch": spec.arch} if spec.arch != NATIVE_ARCH else {}),  # amd64 inputs stay as they were
    }


# ------------------------------------------------------------------------------------- restoring


def _safe(root: Path, rel: str) -> Path:
    # The BOM may come from anywhere: never write outside the directory being restored.
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ConfigError(f"the BOM's build context names an unsafe path: {rel!r}",
                          resolution="use a BOM written by `assembler build`")
    return root.joinpath(*parts)


def restore_context(inputs: dict[str, Any], parent: Path) -> Path:
    """Write the recorded context to parent/IMAGE (the directory name is the image name) and return it.

    The BOM is untrusted: nothing is written through a symbolic link (links are made last, and every file
    is created with O_NOFOLLOW | O_EXCL below real directories only), an entry never replaces another, and
    setuid, setgid and sticky bits are dropped (the context is a temporary directory on the host).
    """
    check_inputs(inputs)
    context = _safe(parent, str(inputs["image"]))
    context.mkdir(parents=True)
    epoch = int(inputs["source_date_epoch"])
    dirs: list[tuple[Path, int]] = []
    links: list[tuple[Path, str]] = []
    try:
        for entry in inputs["context"]:
            path = _safe(context, str(entry["path"]))
            _real_parents(context, path)
            if entry["type"] == "symlink":
                links.append((path, str(entry["target"])))
                continue
            if entry["type"] == "dir":
                path.mkdir(exist_ok=True)
                if path.is_symlink() or not path.is_dir():
                    raise FileExistsError(path)
                dirs.append((path, int(entry["mode"], 8) & 0o777))
                continue
            data = entry["text"].encode() if "text" in entry else base64.b64decode(entry["base64"])
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            path.chmod(int(entry["mode"], 8) & 0o777)
            # The flattened rootfs clamps mtimes to the epoch; files copied in keep the clamped value.
            os.utime(path, (epoch, epoch))
        for path, target in links:
            _real_parents(context, path)
            path.symlink_to(target)
    except (FileExistsError, NotADirectoryError, OSError) as exc:
        raise ConfigError(f"the BOM's build context cannot be restored safely: {exc}",
                          details="an entry lies below a symbolic link or repeats another entry's path",
                          resolution="use a BOM exactly as `assembler build` wrote it") from exc
    for path, mode in reversed(dirs):  # deepest first: writing into a directory moves its mtime
        path.chmod(mode)
        os.utime(path, (epoch, epoch))
    return context


def _real_parents(root: Path, path: Path) -> None:
    """Create path's parents as real directories; refuse any that exists as a link or a file."""
    current = root
    for part in path.relative_to(root).parts[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise NotADirectoryError(f"{current.relative_to(root)} is not a real directory")
        current.mkdir(exist_ok=True)


def restore_recipe(inputs: dict[str, Any], root: Path) -> bootstrap.BaseRecipe | None:
    """Write the base recipe to root/NAME/recipe.yaml (a rootfs directory) and return it parsed."""
    base = inputs.get("base")
    if not base:
        return None
    path = _safe(root, str(base["name"])) / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(base["recipe"]))
    return bootstrap.load_recipe(path)


def parents_of(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The build inputs of the images it starts FROM, nearest first (checked by check_inputs)."""
    found: list[dict[str, Any]] = []
    current = inputs
    while isinstance(current.get("parent"), dict):
        current = current["parent"]
        found.append(current)
    return found


def check_inputs(inputs: dict[str, Any]) -> None:
    """Refuse inputs this version cannot restore faithfully (a newer format, a damaged entry)."""
    if inputs.get("format") != INPUTS_FORMAT or not isinstance(inputs.get("context"), list):
        raise ConfigError(f"unsupported build-inputs format {inputs.get('format')!r} in the BOM",
                          resolution=f"rebuild with an assembler that writes build-inputs format {INPUTS_FORMAT}")
    if "parent" in inputs:  # the image it starts FROM: restorable too, or nothing is restored
        if not isinstance(inputs["parent"], dict):
            raise ConfigError("the BOM's build inputs name a damaged parent image",
                              resolution="use the BOM exactly as `assembler build` wrote it")
        check_inputs(inputs["parent"])
    if inputs.get("arch", NATIVE_ARCH) not in ARCHES:
        raise ConfigError(f"the BOM's build inputs name an unknown architecture {str(inputs.get('arch'))[:40]!r}",
                          resolution=f"use a BOM of an {' or '.join(ARCHES)} image")
    needs = {"symlink": ("target",), "dir": ("mode",), "file": ("mode",)}
    for entry in inputs["context"]:
        fields = needs.get(str(entry.get("type"))) if isinstance(entry, dict) else None
        if fields is None or any(f not in entry for f in ("path", *fields)) or (
                entry["type"] == "file" and "text" not in entry and "base64" not in entry):
            raise ConfigError(f"the BOM's build context has a damaged entry: {str(entry)[:200]}",
                              resolution="use the BOM exactly as `assembler build` wrote it")

