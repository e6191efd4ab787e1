"""out/IMAGE/ publishing: read-only links (or copies) land atomically, unchanged ones are skipped, touched ones
are redone, and an edit through a link is never reused from the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from assembler import outputs
from assembler.config import ImageConfig, ImageSpec
from assembler.fsutil import sha256_file
from assembler.phases.convert import ConvertPhase
from assembler.phases.disk import DiskPhase
from assembler.pipeline import BuildRun, Phase
from assembler.store import Entry, Store


def _phases(ctx: BuildRun) -> list[Phase]:
    """The phases whose entries the fixtures hold: each says which of its files are published."""
    disk = DiskPhase(ctx)
    return [disk, ConvertPhase(ctx, (disk,), "qcow2")]


@pytest.fixture
def ctx(tmp_path: Path) -> BuildRun:
    spec = ImageSpec(name="img", context=tmp_path, containerfile=tmp_path / "Containerfile", config=ImageConfig())
    ctx = BuildRun(spec=spec, store=Store(tmp_path / "cache"), output_dir=tmp_path / "out",
                       formats=["raw", "qcow2"])
    disk_dir = tmp_path / "cache" / "disk"
    disk_dir.mkdir(parents=True)
    (disk_dir / "disk.raw").write_bytes(b"\0" * 4096 + b"boot")
    (disk_dir / "bom.spdx.json").write_text("{}")
    (disk_dir / "bom.cdx.json").write_text("{}")
    conv_dir = tmp_path / "cache" / "conv"
    conv_dir.mkdir()
    (conv_dir / "img.qcow2").write_bytes(b"QFI\xfb")
    ctx.results["disk"] = Entry("k-disk", disk_dir, {"disk": {}})
    ctx.results["convert:qcow2"] = Entry("k-conv", conv_dir, {"output": {
        "format": "qcow2", "file": "img.qcow2", "sha256": sha256_file(conv_dir / "img.qcow2")}})
    return ctx


def test_publish_copies_and_lists_outputs(ctx: BuildRun) -> None:
    listed = outputs.publish(ctx, _phases(ctx))
    assert {o["format"] for o in listed} == {"raw", "qcow2", "spdx", "cyclonedx"}
    for item in listed:
        assert sha256_file(ctx.output_dir / item["path"]) == item["sha256"]
    assert not list(ctx.output_dir.glob(".*.part"))


def test_outputs_are_read_only_links_to_the_cache_by_default(ctx: BuildRun) -> None:
    outputs.publish(ctx, _phases(ctx))
    raw, source = ctx.output_dir / "img.raw", ctx.results["disk"].file("disk.raw")
    assert raw.samefile(source)
    assert raw.stat().st_mode & 0o777 == 0o444


def test_an_edit_through_a_link_discards_the_cache_entry(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    with store.writer("k" * 64) as tmp:
        (tmp / "disk.raw").write_bytes(b"\0" * 4096 + b"boot")
        (tmp / "bom.spdx.json").write_text("{}")
        (tmp / "bom.cdx.json").write_text("{}")
        Store.commit_meta(tmp, {"disk": {}})
    entry = store.get("k" * 64)
    assert entry is not None
    spec = ImageSpec(name="img", context=tmp_path, containerfile=tmp_path / "Containerfile", config=ImageConfig())
    ctx = BuildRun(spec=spec, store=store, output_dir=tmp_path / "out", formats=["raw"])
    ctx.results["disk"] = entry
    outputs.publish(ctx, _phases(ctx))
    raw = ctx.output_dir / "img.raw"
    raw.write_bytes(b"user edit")  # root writes through 0444
    assert store.get("k" * 64) is None  # never a cache hit: built again
    assert not entry.path.exists()


def test_unchanged_copy_is_skipped_and_touched_copy_is_redone(ctx: BuildRun) -> None:
    ctx.copy_outputs = True
    outputs.publish(ctx, _phases(ctx))
    raw = ctx.output_dir / "img.raw"
    first = raw.stat().st_ino
    outputs.publish(ctx, _phases(ctx))
    assert raw.stat().st_ino == first  # not copied again
    assert not raw.samefile(ctx.results["disk"].file("disk.raw"))
    raw.write_bytes(b"user edit")
    outputs.publish(ctx, _phases(ctx))
    assert raw.read_bytes().endswith(b"boot")  # the artefact is restored from the store
    state = json.loads((ctx.output_dir / outputs.STATE).read_text())
    assert state["img.raw"]["key"] == "k-disk"


def test_new_store_entry_replaces_the_copy(ctx: BuildRun) -> None:
    outputs.publish(ctx, _phases(ctx))
    entry = ctx.results["disk"]
    (entry.path / "disk.raw").unlink()  # a new entry's file, not the linked one rewritten
    (entry.path / "disk.raw").write_bytes(b"new disk")
    ctx.results["disk"] = Entry("k-disk-2", entry.path, entry.meta)
    os.utime(ctx.output_dir / "img.raw", ns=(0, (ctx.output_dir / "img.raw").stat().st_mtime_ns))
    outputs.publish(ctx, _phases(ctx))
    assert (ctx.output_dir / "img.raw").read_bytes() == b"new disk"
