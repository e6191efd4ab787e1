"""`assembler rebuild BOM`: recreate an image from the build inputs its SPDX document carries, then check
that the rebuilt rootfs (and disk) are the ones the BOM describes.

The BOM (a .spdx.json, an out/IMAGE directory or a disk holding /usr/share/assembler/bom.spdx.json)
names the context files, base recipe, build args, SOURCE_DATE_EPOCH and download pins (assembler.inputs).
They are written to a temporary directory and built by the normal pipeline, with ASSEMBLER_ROOTFS_DIR
pointing at the recorded recipe. Verification compares the rootfs sha256 (the image's identity), the
Debian package list and, when the source has a manifest, the raw disk sha256. The disk embeds the BOM,
which records the engine's OCI image ID; the classic builder does not make that ID reproducible, so a
disk difference is an error only when the OCI digests agree (otherwise it is reported as explained).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler import bom, inputs
from assembler.config import cache_dir as default_cache_dir
from assembler.config import resolve_image
from assembler.errors import AssemblerError, ConfigError
from assembler.fsutil import write_json
from assembler.log import console
from assembler.manifest import Manifest, read_manifest

REPORT = "rebuild.json"


@dataclass(frozen=True)
class Source:
    """A BOM and, when it came from an out/ directory, that build's manifest."""

    doc: dict[str, Any]
    manifest: Manifest | None = None


def load_source(target: Path) -> Source:
    """The SPDX document from a .spdx.json file, an out/IMAGE directory or a disk image."""
    from assembler import inspect

    if target.is_dir():
        manifest = read_manifest(target)
        spdx = inspect.out_dir_bom(target, manifest)
        if spdx is None or not spdx.is_file():
            raise ConfigError(f"{target} holds no SPDX document", resolution="build with the disk phase first")
        return Source(bom.load_spdx(spdx), manifest)
    if not target.is_file():
        raise ConfigError(f"no such file or directory: {target}",
                          resolution="pass out/IMAGE/IMAGE.spdx.json, out/IMAGE or a disk image")
    fmt = inspect.detect_disk_format(target)
    if fmt is None:
        return Source(bom.load_spdx(target))
    files = inspect.read_disk(target, fmt)["files"]
    if bom.BOM_PATH not in files:
        raise ConfigError(f"{target} has no embedded BOM (/{bom.BOM_PATH})",
                          resolution="rebuild from a disk made by `assembler build`, or pass its .spdx.json")
    return Source(json.loads(files[bom.BOM_PATH]))


def inputs_of(doc: dict[str, Any]) -> dict[str, Any]:
    found = bom.build_inputs_of(doc)
    if found is None:
        raise ConfigError("the BOM carries no build inputs",
                          resolution="rebuild the image once with this assembler (BOM format "
                                     f"{bom.BOM_FORMAT}); its BOM then records how to recreate it")
    inputs.check_inputs(found)
    return found


@contextmanager
def _rootfs_dir(path: Path) -> Iterator[None]:
    # config.rootfs_dir() reads the variable on every call: the build sees the recorded recipe only.
    previous = os.environ.get("ASSEMBLER_ROOTFS_DIR")
    os.environ["ASSEMBLER_ROOTFS_DIR"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("ASSEMBLER_ROOTFS_DIR", None)
        else:
            os.environ["ASSEMBLER_ROOTFS_DIR"] = previous


def expected(source: Source) -> dict[str, Any]:
    facts = bom.summary(source.doc)
    return {"rootfs_sha256": facts.get("rootfs_sha256"), "oci_digest": facts.get("oci_digest"),
            "raw_sha256": _raw_sha256(source.manifest) if source.manifest else None,
            "packages": bom.deb_packages(source.doc)}


def _raw_sha256(manifest: Manifest) -> str | None:
    raw = manifest.output("raw")
    return manifest.disk.sha256 if manifest.disk else raw.sha256 if raw else None


def actual(manifest: Manifest, out: Path) -> dict[str, Any]:
    spdx = manifest.output("spdx")
    doc = bom.load_spdx(out / spdx.path) if spdx else {}
    return {"rootfs_sha256": manifest.rootfs.sha256 if manifest.rootfs else None,
            "oci_digest": manifest.oci.digest if manifest.oci else None,
            "raw_sha256": _raw_sha256(manifest), "packages": bom.deb_packages(doc)}


def compare(want: dict[str, Any], got: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(differences that fail the rebuild, notes) between the BOM's facts and the rebuilt ones."""
    errors: list[str] = []
    notes: list[str] = []
    if want["rootfs_sha256"] != got["rootfs_sha256"]:
        errors.append(f"rootfs sha256: BOM {want['rootfs_sha256']} != rebuilt {got['rootfs_sha256']}")
    if want["packages"] != got["packages"]:
        changed = sorted(set(want["packages"]) ^ set(got["packages"]) |
                         {n for n in set(want["packages"]) & set(got["packages"])
                          if want["packages"][n] != got["packages"][n]})
        errors.append(f"Debian packages differ: {', '.join(changed[:20])}")
    if want["raw_sha256"] and got["raw_sha256"] and want["raw_sha256"] != got["raw_sha256"]:
        # The disk depends only on the flattened rootfs (the embedded BOM leaves out engine digests).
        errors.append(f"raw disk sha256: original {want['raw_sha256']} != rebuilt {got['raw_sha256']}")
    if want["oci_digest"] != got["oci_digest"]:
        notes.append(f"OCI image ID {want['oci_digest']} then, {got['oci_digest']} now: the classic builder "
                     "does not reproduce it; the rootfs and the disk do not depend on it")
    return errors, notes


def rebuild(target: Path, *, output: Path | None = None, cache: Path | None = None, boot_test: bool = True,
            verify: bool = True, nocache: bool = True, formats: list[str] | None = None,
            bundle: Path | None = None, offline: bool = False) -> dict[str, Any]:
    """Recreate the image the BOM at `target` describes; return the report (also written as rebuild.json).

    The recorded context carries the effective lock: its files come from the package store, then the mirror
    map's sources, or all from `bundle` (imported into the store first); `offline` fetches nothing.
    """
    from assembler import engine
    from assembler.build import build
    from assembler.formats import validate_format_names
    from assembler.pipeline import BuildRun
    from assembler.rootfs import bootstrap
    from assembler.store import Store

    source = load_source(target)
    recorded = inputs_of(source.doc)
    name = str(recorded["image"])
    out = output or Path.cwd() / "out" / f"{name}-rebuild"
    store_root = default_cache_dir(cache)
    if bundle is not None:
        from assembler.packages.bundle import read_bundle

        read_bundle(bundle, store_root)  # every blob verified into the package store and download cache
    with tempfile.TemporaryDirectory(prefix="assembler-rebuild-") as tmp:
        # The image and each one it starts FROM (assembler/NAME), side by side: a parent is found beside it.
        chain = [recorded, *inputs.parents_of(recorded)]
        context = inputs.restore_context(recorded, Path(tmp) / "context")
        for above in chain[1:]:
            inputs.restore_context(above, Path(tmp) / "context")
        recipes = [(item, inputs.restore_recipe(item, Path(tmp) / "rootfs")) for item in chain]
        console.print(f"[bold]rebuild[/] {name} from {target}: {len(recorded['context'])} context entries, "
                      f"{' <- '.join(str(item['image']) for item in chain)}, base "
                      f"{next((str(i['base']['name']) for i in chain if i.get('base')), 'none')}")
        with _rootfs_dir(Path(tmp) / "rootfs"):
            spec = resolve_image(str(context)).for_arch(str(recorded.get("arch", "amd64")))  # type: ignore[arg-type]
            for item, recipe in recipes:
                if recipe is not None and not item["base"].get("declared"):
                    # The Containerfile FROMs the recipe's tag without declaring it: load it as a build would.
                    bootstrap.ensure_base(engine.connect(), recipe, store_root)
            # raw always: the disk is what the BOM is embedded in and what verification compares.
            chosen = validate_format_names(sorted({"raw", *(formats or spec.config.formats)}),
                                           spec.config.format_options)
            ctx = BuildRun(spec=spec, store=Store(store_root), output_dir=out, formats=chosen,
                               nocache=nocache, boot_test=boot_test, locked=offline, offline=offline)
            build(ctx)
    want, got = expected(source), actual(read_manifest(out), out)
    errors, notes = compare(want, got) if verify else ([], [])
    report: dict[str, Any] = {
        "source": str(target), "image": name, "output": str(out), "verified": verify and not errors,
        "differences": errors, "notes": notes,
        "expected": {**want, "packages": len(want["packages"])}, "actual": {**got, "packages": len(got["packages"])},
    }
    write_json(out / REPORT, report)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", markup=True, highlight=False)
    if errors:
        raise AssemblerError(f"the rebuilt {name} differs from its BOM", details="\n".join(errors),
                             resolution="compare the inputs (mirror state, base image, downloads) with "
                                        f"`assembler diff {target} {out}`; details in {out / REPORT}")
    if verify:
        console.print(f"[bold green]verified[/] rebuilt rootfs sha256 {report['actual']['rootfs_sha256']}")
    return report
