"""The build context as the engine sees it: mirror build arguments, preflight, pinned downloads.

`prepare_context()` is the one entry point the rootfs phase calls before building:
  1. read the mirror map and turn the Containerfile's mirror arguments (ARG BASE_IMAGE, ARG APT_MIRROR,
     ARG APT_SECURITY_MIRROR: their defaults are the upstream locations) into build args for the mirrors;
  2. preflight: probe the base image's registry (unless the engine has it), the apt mirrors and every
     download not in the cache, in parallel, and fail fast with one clear error;
  3. copy the image directory to a temporary context and put the verified downloads under downloads/.

`context_material()` is what the rootfs cache key needs from this: the download pins and which optional
downloads are available. Not the mirror map: pins do not change with the mirror.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler import engine, preflight
from assembler.config import ImageSpec
from assembler.downloads import DOWNLOADS_DIR, DOWNLOADS_FILE, Download, cached, load_downloads, materialize
from assembler.errors import AssemblerError
from assembler.log import log
from assembler.mirrors import MirrorMap, load_mirror_map

# Containerfile arguments whose defaults name upstream locations, and how the map rewrites them.
MIRRORED_ARGS = {"BASE_IMAGE": "image", "APT_MIRROR": "url", "APT_SECURITY_MIRROR": "url"}
_ARG_RE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", re.IGNORECASE)
_FROM_RE = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE)

# Availability of optional downloads decided when the build was planned (context_material), honoured
# when it runs (prepare_context), so the cache key and the built content never disagree.
# sha256 -> None (available) or why not.
_PLANNED: dict[str, str | None] = {}


def _available(item: Download) -> bool | None:
    """True/False as decided at planning time; None when the plan did not look at the item."""
    return None if item.sha256 not in _PLANNED else _PLANNED[item.sha256] is None


@dataclass(frozen=True)
class PreparedContext:
    path: Path  # the directory to build from
    build_args: dict[str, str] = field(default_factory=dict)  # mirror arguments to merge into buildargs
    downloads: list[dict[str, str]] = field(default_factory=list)  # name, url used, sha256, dest, status


def containerfile_args(containerfile: Path) -> dict[str, str]:
    """`ARG NAME=default` declarations (the first default of each name wins; no default -> '')."""
    args: dict[str, str] = {}
    for line in containerfile.read_text().splitlines():
        if match := _ARG_RE.match(line):
            default = match.group(2) or ""
            value = " ".join(shlex.split(default)) if default else ""
            args.setdefault(match.group(1), value)
    return args


def base_reference(containerfile: Path) -> str | None:
    """The first FROM's image with ARG defaults substituted."""
    args = containerfile_args(containerfile)
    for line in containerfile.read_text().splitlines():
        if match := _FROM_RE.match(line):
            return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)),
                          match.group(1))
    return None


def mirror_args(spec: ImageSpec, mirrors: MirrorMap) -> dict[str, str]:
    """Build args that point the Containerfile's declared upstream locations at the mirrors."""
    declared = containerfile_args(spec.containerfile)
    result = {}
    for name, kind in MIRRORED_ARGS.items():
        if declared.get(name):
            upstream = declared[name]
            result[name] = mirrors.image(upstream) if kind == "image" else mirrors.url(upstream)
    return result


def _downloads(spec: ImageSpec) -> list[Download]:
    return load_downloads(spec.context / DOWNLOADS_FILE)


def context_material(spec: ImageSpec, cache_dir: Path | None = None) -> dict[str, Any]:
    """What the rootfs cache key needs: download pins, and which optional downloads are available now."""
    items = _downloads(spec)
    optional = [i for i in items if i.optional and (cache_dir is None or cached(cache_dir, i) is None)]
    mirrors = load_mirror_map()
    endpoints = [preflight.Endpoint(mirrors.url(i.url), f"download {i.name}", i.url, required=False)
                 for i in optional]
    unreachable = preflight.probe_all(endpoints) if endpoints else {}
    for item in optional:
        _PLANNED[item.sha256] = unreachable.get(mirrors.url(item.url))
    return {"downloads": [{"name": i.name, "sha256": i.sha256, "dest": i.dest, "optional": i.optional,
                           "available": _available(i) is not False} for i in items]}


def endpoints_for(spec: ImageSpec, mirrors: MirrorMap, items: list[Download], cache_dir: Path) -> list[
        preflight.Endpoint]:
    """Every external location this build would touch, as probes (cached downloads need no network)."""
    found = []
    base = base_reference(spec.containerfile)
    if base and not base.startswith("localhost/") and not _engine_has(mirrors.image(base)):
        ref = mirrors.image(base)
        found.append(preflight.Endpoint(preflight.registry_probe_url(ref), f"registry for base image {ref}",
                                        base, kind="registry"))
    declared = containerfile_args(spec.containerfile)
    for name, kind in MIRRORED_ARGS.items():
        if kind == "url" and declared.get(name):
            found.append(preflight.Endpoint(mirrors.url(declared[name]), f"apt mirror {name}", declared[name],
                                            kind="mirror"))
    for item in items:
        if cached(cache_dir, item) is None and _available(item) is not False:
            found.append(preflight.Endpoint(mirrors.url(item.url), f"download {item.name}", item.url,
                                            required=not item.optional or _available(item) is True))
    return found


def _engine_has(ref: str) -> bool:
    try:
        return engine.image_exists(engine.connect(start=False), ref)
    except AssemblerError:
        return False


def prepare_context(spec: ImageSpec, cache_dir: Path, work_dir: Path, *,
                    mirrors: MirrorMap | None = None) -> PreparedContext:
    """Preflight, then a build context with the verified downloads; see the module docstring."""
    mirrors = mirrors or load_mirror_map()
    items = _downloads(spec)
    args = mirror_args(spec, mirrors)
    unreachable = preflight.check(endpoints_for(spec, mirrors, items, cache_dir), mirrors, image=spec.name)
    if not items:
        return PreparedContext(spec.context, args, [])
    context = work_dir / "context"
    if context.exists():
        shutil.rmtree(context)
    # The image directory's own downloads/ (if any) is replaced: only verified files reach the build.
    shutil.copytree(spec.context, context, symlinks=True, ignore=_ignore_downloads(spec.context))
    skip = {i.sha256: _PLANNED.get(i.sha256) or unreachable[mirrors.url(i.url)]
            for i in items if i.optional and (_available(i) is False or mirrors.url(i.url) in unreachable)}
    # An optional file that was available when the key was computed must be in the build: no silent skip.
    items = [i.model_copy(update={"optional": False}) if _available(i) else i for i in items]
    results = materialize(items, mirrors, cache_dir, context, skip=skip)
    for result in results:
        if result.status != "skipped":
            log.info("download %s: %s", result.name, result.status)
    return PreparedContext(context, args, [r.as_dict() for r in results])


def _ignore_downloads(root: Path) -> Any:
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [DOWNLOADS_DIR] if Path(directory) == root and DOWNLOADS_DIR in names else []
    return ignore
