"""The build context as the engine sees it: mirror build arguments, preflight, pinned downloads.

`prepare_context()` is the one entry point the rootfs phase calls before building:
  1. read the mirror map and turn the Containerfile's mirror arguments (ARG BASE_IMAGE, ARG APT_MIRROR,
     ARG APT_SECURITY_MIRROR: their defaults are the upstream locations) into build args for the mirrors;
  2. preflight: probe the base image's registry (unless the engine has it), the apt mirrors and every
     download not in the cache, in parallel, and fail fast with one clear error;
  3. copy the image directory to a temporary context and put the verified downloads under downloads/.

`context_material()` is what the rootfs cache key needs from this: the download pins and which optional
downloads are available. Not the mirror map: pins do not change with the mirror. It is pure: availability is
an input, found by `probe_optional()` (the network, once, before any key is computed) or, for a dry run,
read back from what the last probe recorded in the cache (`recorded_availability()`).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler import engine
from assembler.config import ImageSpec
from assembler.errors import AssemblerError, ConfigError
from assembler.fsutil import write_json
from assembler.log import log
from assembler.mirrors import MirrorMap, load_mirror_map
from assembler.rootfs import preflight
from assembler.rootfs.downloads import DOWNLOADS_DIR, DOWNLOADS_FILE, Download, cached, load_downloads, materialize

# Containerfile arguments whose defaults name upstream locations, and how the map rewrites them.
MIRRORED_ARGS = {"BASE_IMAGE": "image", "APT_MIRROR": "url", "APT_SECURITY_MIRROR": "url"}
_ARG_RE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", re.IGNORECASE)
_FROM_RE = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE)
# Another image of ours, by name: no registry host, no tag (what a registry would serve is never meant).
_PARENT_RE = re.compile(r"^assembler/([a-z0-9][a-z0-9._-]{0,127})$")
PARENT_PREFIX = "assembler/"

AVAILABILITY_FILE = "optional.json"  # under the cache's downloads/: what the last probe found


@dataclass(frozen=True)
class Availability:
    """Which optional downloads can be had, decided once before the rootfs key and honoured when it runs, so
    the key and the built content never disagree. sha256 -> None (available) or why not; an item not in
    `decided` was never looked at (a dry run before any probe)."""

    decided: Mapping[str, str | None] = field(default_factory=dict)

    def state(self, item: Download) -> bool | None:
        return None if item.sha256 not in self.decided else self.decided[item.sha256] is None


def _record_path(cache_dir: Path) -> Path:
    return cache_dir / DOWNLOADS_DIR / AVAILABILITY_FILE


def _read_record(cache_dir: Path) -> dict[str, Any]:
    """What earlier probes found; our own file, but a missing or damaged one is just "never probed"."""
    try:
        raw = json.loads(_record_path(cache_dir).read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def recorded_availability(spec: ImageSpec, cache_dir: Path) -> Availability:
    """No network: optional downloads in the cache are available; the rest as the last probe found them."""
    record = _read_record(cache_dir)
    decided: dict[str, str | None] = {}
    for item in _downloads(spec):
        if not item.optional:
            continue
        if cached(cache_dir, item) is not None:
            decided[item.sha256] = None
        elif item.sha256 in record and (record[item.sha256] is None or isinstance(record[item.sha256], str)):
            decided[item.sha256] = record[item.sha256]
    return Availability(decided)


def probe_optional(spec: ImageSpec, cache_dir: Path) -> Availability:
    """Probe the optional downloads not in the cache (in parallel, through the mirror map) and record what
    was found for later dry runs."""
    items = [i for i in _downloads(spec) if i.optional]
    missing = [i for i in items if cached(cache_dir, i) is None]
    if not missing:
        return Availability({i.sha256: None for i in items})
    mirrors = load_mirror_map()
    unreachable = preflight.probe_all([preflight.Endpoint(mirrors.url(i.url), f"download {i.name}", i.url,
                                                          required=False) for i in missing])
    probed = {i.sha256 for i in missing}
    decided = {i.sha256: unreachable.get(mirrors.url(i.url)) if i.sha256 in probed else None for i in items}
    write_json(_record_path(cache_dir), {**_read_record(cache_dir), **decided})
    return Availability(decided)


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


def _substituted(reference: str, args: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), reference)


def base_reference(containerfile: Path) -> str | None:
    """The first FROM's image with ARG defaults substituted."""
    args = containerfile_args(containerfile)
    for line in containerfile.read_text().splitlines():
        if match := _FROM_RE.match(line):
            return _substituted(match.group(1), args)
    return None


def parent_name(containerfile: Path) -> str | None:
    """The image of ours every `FROM assembler/NAME` of the Containerfile names (written out, not through an
    ARG), or None. One such image at most: the build starts from what that image's rootfs phase built."""
    found: set[str] = set()
    for line in containerfile.read_text().splitlines():
        if (match := _FROM_RE.match(line)) and (named := _PARENT_RE.match(match.group(1))):
            found.add(named.group(1))
    if len(found) > 1:
        raise ConfigError(f"{containerfile} starts FROM {len(found)} images of ours: {', '.join(sorted(found))}",
                          resolution="build on one image of ours (FROM assembler/NAME); copy from others with "
                                     "a multi-stage build of that one")
    return found.pop() if found else None


def rewrite_from(text: str, reference: str, replacement: str, labels: Mapping[str, str] | None = None) -> str:
    """The Containerfile with every `FROM reference` replaced by `replacement`, and `labels` set right after it
    (a cache scope for the engine: RUN steps are reused on the same labels only)."""
    pattern = rf"(?im)^(\s*FROM\s+(?:--platform=\S+\s+)?){re.escape(reference)}(?=\s|$)(.*)$"
    label = "".join(f"\nLABEL {json.dumps(k)}={json.dumps(v)}" for k, v in sorted((labels or {}).items()))
    return re.sub(pattern, lambda m: m.group(1) + replacement + m.group(2) + label, text)


def from_parent(text: str, name: str, image_id: str, labels: Mapping[str, str] | None = None) -> str:
    """The Containerfile with every `FROM assembler/NAME` replaced by the engine's image ID of that build."""
    return rewrite_from(text, PARENT_PREFIX + name, image_id, labels)


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
    return load_downloads(spec.context / DOWNLOADS_FILE, spec.arch)


def context_material(spec: ImageSpec, availability: Availability = Availability()) -> dict[str, Any]:
    """What the rootfs cache key needs: download pins, and which optional downloads are available (an item
    never looked at counts as available)."""
    return {"downloads": [{"name": i.name, "sha256": i.sha256, "dest": i.dest, "optional": i.optional,
                           "available": availability.state(i) is not False} for i in _downloads(spec)]}


def endpoints_for(spec: ImageSpec, mirrors: MirrorMap, items: list[Download], cache_dir: Path,
                  availability: Availability = Availability()) -> list[preflight.Endpoint]:
    """Every external location this build would touch, as probes (cached downloads need no network)."""
    found = []
    base = base_reference(spec.containerfile)
    if base and not base.startswith(("localhost/", PARENT_PREFIX)) and not _engine_has(mirrors.image(base)):
        ref = mirrors.image(base)
        found.append(preflight.Endpoint(preflight.registry_probe_url(ref), f"registry for base image {ref}",
                                        base, kind="registry"))
    declared = containerfile_args(spec.containerfile)
    for name, kind in MIRRORED_ARGS.items():
        if kind == "url" and declared.get(name):
            found.append(preflight.Endpoint(mirrors.url(declared[name]), f"apt mirror {name}", declared[name],
                                            kind="mirror"))
    for item in items:
        if cached(cache_dir, item) is None and availability.state(item) is not False:
            found.append(preflight.Endpoint(mirrors.url(item.url), f"download {item.name}", item.url,
                                            required=not item.optional or availability.state(item) is True))
    return found


def _engine_has(ref: str) -> bool:
    try:
        return engine.image_exists(engine.connect(start=False), ref)
    except AssemblerError:
        return False


def prepare_context(spec: ImageSpec, cache_dir: Path, work_dir: Path, *, mirrors: MirrorMap | None = None,
                    availability: Availability = Availability()) -> PreparedContext:
    """Preflight, then a build context with the verified downloads; see the module docstring."""
    mirrors = mirrors or load_mirror_map()
    items = _downloads(spec)
    args = mirror_args(spec, mirrors)
    unreachable = preflight.check(endpoints_for(spec, mirrors, items, cache_dir, availability), mirrors,
                                  image=spec.name)
    if not items:
        return PreparedContext(spec.context, args, [])
    context = work_dir / "context"
    if context.exists():
        shutil.rmtree(context)
    # The image directory's own downloads/ (if any) is replaced: only verified files reach the build.
    shutil.copytree(spec.context, context, symlinks=True, ignore=_ignore_downloads(spec.context))
    skip = {i.sha256: availability.decided.get(i.sha256) or unreachable[mirrors.url(i.url)]
            for i in items
            if i.optional and (availability.state(i) is False or mirrors.url(i.url) in unreachable)}
    # An optional file that was available when the key was computed must be in the build: no silent skip.
    items = [i.model_copy(update={"optional": False}) if availability.state(i) else i for i in items]
    results = materialize(items, mirrors, cache_dir, context, skip=skip)
    for result in results:
        if result.status != "skipped":
            log.info("download %s: %s", result.name, result.status)
    return PreparedContext(context, args, [r.as_dict() for r in results])


def _ignore_downloads(root: Path) -> Any:
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [DOWNLOADS_DIR] if Path(directory) == root and DOWNLOADS_DIR in names else []
    return ignore
