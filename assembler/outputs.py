"""Publishing store artefacts into out/IMAGE/: read-only hard links (sparse copies across filesystems),
placed atomically and skipped when already in place.

A link costs no time and no second copy of a multi-GB disk. It also shares the inode with the cache entry,
so both are made read-only, and the store's check of every entry file's size and mtime (Store.get) is what
keeps an edit of an output from ever being used as a cache hit: the entry is discarded and built again, and
the next publish replaces the edited file. `assembler build --copy-outputs` keeps separate copies instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assembler.fsutil import atomic_path, sha256_file, write_json
from assembler.pipeline import Artefact, BuildRun, Phase
from assembler.run import run

STATE = ".assembler-outputs.json"  # what was copied from which store key, to skip unchanged copies


def publish(ctx: BuildRun, phases: Sequence[Phase]) -> list[dict[str, Any]]:
    """Link (or with ctx.copy_outputs, copy) the artefacts of every finished phase into the output directory;
    return the manifest's `outputs` list."""
    out_dir = ctx.output_dir
    state = _load_state(out_dir)
    outputs: list[dict[str, Any]] = []
    done = [phase.artefacts(ctx.results[phase.label]) for phase in phases if phase.label in ctx.results]
    for artefact in (a for artefacts in done for a in artefacts):
        dest = out_dir / artefact.name
        if not _unchanged(dest, artefact, state.get(artefact.name)):
            _place(artefact.source, dest, copy=ctx.copy_outputs)
        stat = dest.stat()
        state[artefact.name] = {"key": artefact.key, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if artefact.fmt:
            digest = artefact.sha256 or sha256_file(dest)
            outputs.append({"format": artefact.fmt, "path": artefact.name, "sha256": digest})
    write_json(out_dir / STATE, state)
    return outputs


def _unchanged(dest: Path, artefact: Artefact, recorded: dict[str, Any] | None) -> bool:
    """True when dest is the copy we made from the same store entry and nobody touched it since."""
    if recorded is None or recorded.get("key") != artefact.key or not dest.is_file():
        return False
    stat = dest.stat()
    return bool(stat.st_size == recorded.get("size") and stat.st_mtime_ns == recorded.get("mtime_ns"))


def _load_state(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _place(source: Path, dest: Path, *, copy: bool) -> None:
    with atomic_path(dest) as tmp:
        if not copy:
            try:
                tmp.unlink()
                os.link(source, tmp)
            except OSError:  # another filesystem, or one without hard links: a copy
                copy = True
        if copy:
            run(["cp", "--sparse=always", "--reflink=auto", source, tmp])
    dest.chmod(0o644 if copy else 0o444)
