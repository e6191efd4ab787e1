"""Differential test of the flattener: generated layer stacks, flattened by us and by the engine, compared.

A seeded generator makes a few hundred small images straight as docker-archives (no builder involved, so
the layers can be what other tools write: implicit parent directories, whiteouts and opaque markers under
implicit directories, replacements of a directory by a file or a symlink and back, hard links, odd modes
and owners). The engine loads them all at once, and each is exported from a created container; our
flatten() of the same archive must give the same entries (type, mode, owner, link target, data, hard-link
groups). A failure prints the seed and the stack, which `STACK_SEED=N pytest -k differential` replays alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from assembler.rootfs import layers as layer_index
from assembler.rootfs.flatten import flatten
from tests.integration.test_flatten_engine import Entry, export, view

pytestmark = pytest.mark.integration

CASES = int(os.environ.get("STACK_CASES", "200"))
ONLY = os.environ.get("STACK_SEED")
NAMES = ("a", "b", "c")
SDE = 1_700_000_000
# What a container adds to every image (the engine's init layer): compared on neither side.
ENGINE_ONLY_TOP = {"etc", "dev", "proc", "sys", ".dockerenv"}


@dataclass
class Op:
    kind: str  # file dir symlink hardlink whiteout opaque
    path: str
    mode: int = 0o644
    uid: int = 0
    data: bytes = b""
    target: str = ""


@dataclass
class Layer:
    ops: dict[str, Op] = field(default_factory=dict)
    explicit_parents: bool = True


def _paths(rng: random.Random) -> str:
    return "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 3)))


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _fits(layer: Layer, op: Op) -> bool:
    """One tar cannot say contradictory things about a path: only directories have entries below them,
    and a whiteout's path has nothing else in the layer above or below it."""
    if op.path in layer.ops:
        return False
    for other in layer.ops.values():
        above, below = other.path in _parents(op.path), op.path in _parents(other.path)
        if above and (other.kind not in ("dir", "opaque") or op.kind == "whiteout"):
            return False
        if below and (op.kind not in ("dir", "opaque") or other.kind == "whiteout"):
            return False
    return True


def generate(seed: int) -> list[Layer]:
    rng = random.Random(seed)
    layers = []
    for _ in range(rng.randint(2, 4)):
        layer = Layer(explicit_parents=rng.random() < 0.5)
        for _ in range(rng.randint(1, 7)):
            path = _paths(rng)
            kind = rng.choices(("file", "dir", "symlink", "hardlink", "whiteout", "opaque"),
                               weights=(5, 3, 2, 1, 3, 2))[0]
            op = Op(kind, path, uid=rng.choice((0, 0, 1000)))
            if kind == "file":
                op.mode, op.data = rng.choice((0o644, 0o600, 0o755, 0o4755)), rng.randbytes(rng.randint(0, 64))
            elif kind == "dir" or kind == "opaque":
                op.mode = rng.choice((0o755, 0o700, 0o750, 0o1777))
            elif kind == "symlink":
                op.mode, op.target = 0o777, rng.choice(("../x", "/a/b", "c", "./a/../b"))
            elif kind == "hardlink":
                files = [o.path for o in layer.ops.values() if o.kind == "file"]
                if not files:
                    continue
                op.target = rng.choice(files)
                # As every tar writer does: a hard link's header repeats its inode's mode and owner.
                op.mode, op.uid = layer.ops[op.target].mode, layer.ops[op.target].uid
            if _fits(layer, op):
                layer.ops[path] = op
        layers.append(layer)
    return layers


def _member(name: str, kind: bytes, mode: int = 0o755, uid: int = 0, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime, info.size = kind, mode, uid, uid, SDE, size
    return info


def layer_tar(layer: Layer) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        written: set[str] = set()

        def parents(path: str) -> None:
            for parent in _parents(path):
                if parent not in written and parent not in layer.ops:
                    tar.addfile(_member(parent, tarfile.DIRTYPE))
                    written.add(parent)

        ordered = sorted(layer.ops.values(), key=lambda o: (o.kind == "hardlink", o.path.split("/")))
        for op in ordered:
            if layer.explicit_parents:
                parents(op.path)
            if op.kind == "file":
                tar.addfile(_member(op.path, tarfile.REGTYPE, op.mode, op.uid, len(op.data)), io.BytesIO(op.data))
            elif op.kind in ("dir", "opaque"):
                tar.addfile(_member(op.path, tarfile.DIRTYPE, op.mode, op.uid))
                if op.kind == "opaque":
                    tar.addfile(_member(f"{op.path}/.wh..wh..opq", tarfile.REGTYPE, 0o644))
            elif op.kind == "symlink":
                info = _member(op.path, tarfile.SYMTYPE, 0o777, op.uid)
                info.linkname = op.target
                tar.addfile(info)
            elif op.kind == "hardlink":
                info = _member(op.path, tarfile.LNKTYPE, op.mode, op.uid)
                info.linkname = op.target
                tar.addfile(info)
            elif op.kind == "whiteout":
                head, _, base = op.path.rpartition("/")
                tar.addfile(_member(f"{head}/.wh.{base}" if head else f".wh.{base}", tarfile.REGTYPE, 0o644))
            written.add(op.path)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def add_image(archive: tarfile.TarFile, tag: str, layers: list[Layer], done: set[str]) -> dict[str, object]:
    """Write the layers (once each) and the config of one image; return its manifest.json entry."""
    names, diff_ids = [], []
    for layer in layers:
        data = layer_tar(layer)
        digest = hashlib.sha256(data).hexdigest()
        name = f"{digest}/layer.tar"
        if name not in done:
            _add(archive, name, data)
            done.add(name)
        names.append(name)
        diff_ids.append(f"sha256:{digest}")
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/none"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created_by": f"layer {i}"} for i in range(len(layers))]}).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    if config_name not in done:
        _add(archive, config_name, config)
        done.add(config_name)
    return {"Config": config_name, "RepoTags": [tag], "Layers": names}


def write_archive(path: Path, images: dict[str, list[Layer]]) -> None:
    done: set[str] = set()
    with tarfile.open(path, "w") as archive:
        manifest = [add_image(archive, tag, layers, done) for tag, layers in images.items()]
        _add(archive, "manifest.json", json.dumps(manifest).encode())


def comparable(path: Path) -> tuple[dict[str, Entry], set[frozenset[str]]]:
    entries, links = view(path)
    keep = {p: e for p, e in entries.items() if p.split("/")[0] not in ENGINE_ONLY_TOP}
    return keep, {g for g in links if all(p in keep for p in g)}


_INDEX_KINDS = {"file": tarfile.REGTYPE, "hardlink": tarfile.REGTYPE, "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE}


def index_view(archive: Path) -> dict[str, tuple[bytes, int, int]]:
    """What `assembler diff` and `inspect` see of the same stack: the layer index merged by the same rules."""
    merged = layer_index.merge(layer_index.read_archive(archive))
    return {p: (_INDEX_KINDS[m.entry.type], m.entry.mode & 0o7777, m.entry.uid) for p, m in merged.items()}


def describe(layers: list[Layer]) -> str:
    lines = []
    for i, layer in enumerate(layers):
        lines.append(f"  layer {i} ({'explicit' if layer.explicit_parents else 'implicit'} parents):")
        lines += [f"    {op.kind:8} {op.path:8} mode={op.mode:o} uid={op.uid} {op.target}" for op in layer.ops.values()]
    return "\n".join(lines)


def test_generated_stacks_flatten_like_the_engine(engine_client: docker.DockerClient, tmp_path: Path) -> None:
    seeds = [int(ONLY)] if ONLY else list(range(CASES))
    stacks = {f"assembler-test/stack:{seed}": generate(seed) for seed in seeds}
    combined = tmp_path / "all.tar"
    write_archive(combined, stacks)
    with combined.open("rb") as handle:
        messages = list(engine_client.api.load_image(handle))
    assert not [m for m in messages if "error" in m], messages[-3:]
    failures = []
    try:
        for seed in seeds:
            tag = f"assembler-test/stack:{seed}"
            single = tmp_path / f"{seed}.tar"
            write_archive(single, {tag: stacks[tag]})
            ours = flatten(single, tmp_path / f"{seed}-ours.tar", source_date_epoch=SDE).path
            theirs = export(engine_client, tag, tmp_path / f"{seed}-engine.tar")
            (our_entries, our_links), (their_entries, their_links) = comparable(ours), comparable(theirs)
            indexed = index_view(single)
            if indexed != {p: (e.kind, e.mode, e.owner[0]) for p, e in their_entries.items()}:
                failures.append(f"seed {seed}: the layer index (assembler diff) merges otherwise: {indexed}\n"
                                + describe(stacks[tag]))
            if our_entries != their_entries or our_links != their_links:
                only_ours = sorted(set(our_entries) - set(their_entries))
                only_theirs = sorted(set(their_entries) - set(our_entries))
                differ = sorted(p for p in set(our_entries) & set(their_entries)
                                if our_entries[p] != their_entries[p])
                failures.append(f"seed {seed}: only ours {only_ours}, only engine {only_theirs}, differ "
                                + "; ".join(f"{p}: ours {our_entries[p]} engine {their_entries[p]}" for p in differ)
                                + f", links ours {our_links} engine {their_links}\n{describe(stacks[tag])}")
            for leftover in (single, ours, theirs):
                leftover.unlink()
    finally:
        for seed in seeds:
            with contextlib.suppress(docker.errors.APIError):
                engine_client.api.remove_image(f"assembler-test/stack:{seed}", force=True)
    assert not failures, f"{len(failures)} of {len(seeds)} stacks differ:\n" + "\n".join(failures[:5])
