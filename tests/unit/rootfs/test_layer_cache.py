"""The layer index cache: a layer seen before is not read again, and the index is the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assembler.rootfs import layers
from tests.unit.rootfs.test_flatten import E, docker_archive

BASE = [E("etc", kind="dir"), E("etc/a", b"a"), E("etc/b", b"b"), E("bin", kind="dir"), E("bin/x", b"x" * 5000),
        E("bin/y", kind="link", target="bin/x")]
TOP = [E("etc/.wh.a"), E("etc/c", b"c"), E("bin/z", kind="link", target="bin/x")]  # hard link into a lower layer


def _index_bytes(archive: Path, dest: Path, cache: layers.LayerCache | None) -> bytes:
    layers.index_archive(archive, dest, cache)
    return dest.read_bytes()


def test_a_cached_index_is_byte_identical_to_a_fresh_one(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "image.tar", [BASE, TOP])
    cache = layers.LayerCache(tmp_path / "cache")
    fresh = _index_bytes(archive, tmp_path / "fresh.json", None)
    assert _index_bytes(archive, tmp_path / "first.json", cache) == fresh
    assert len(list(cache.dir.glob("*.json"))) == 2
    assert _index_bytes(archive, tmp_path / "cached.json", cache) == fresh
    hardlink = next(e for e in json.loads(fresh)["layers"][1]["entries"] if e["path"] == "bin/z")
    assert "sha256" not in hardlink  # its target is in the layer below: merge() fills it, not the cache


def test_a_rebuild_reads_only_the_layers_it_has_not_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = layers.LayerCache(tmp_path / "cache")
    layers.index_archive(docker_archive(tmp_path / "one.tar", [BASE, TOP]), tmp_path / "one.json", cache)
    changed = [*TOP[:2], E("etc/d", b"the last step changed")]
    read: list[int] = []
    real = layers.index_layer_tar

    def counting(tf, index=0, diff_id="", step="", capture=None):  # type: ignore[no-untyped-def]
        read.append(index)
        return real(tf, index, diff_id, step, capture)

    monkeypatch.setattr(layers, "index_layer_tar", counting)
    archive = docker_archive(tmp_path / "two.tar", [BASE, changed])
    index = layers.index_archive(archive, tmp_path / "two.json", cache)
    assert read == [1]
    monkeypatch.undo()
    assert index == layers.read_archive(archive)
    assert "etc/d" in layers.merge(index) and "etc/a" not in layers.merge(index)


def test_a_damaged_or_forged_cache_file_is_indexed_again(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "image.tar", [BASE, TOP])
    cache = layers.LayerCache(tmp_path / "cache")
    fresh = _index_bytes(archive, tmp_path / "fresh.json", cache)
    files = sorted(cache.dir.glob("*.json"))
    files[0].write_text("{not json")
    forged = json.loads(files[1].read_text())
    forged["entries"][0]["sha256"] = "../../etc/shadow"
    files[1].write_text(json.dumps(forged))
    assert _index_bytes(archive, tmp_path / "again.json", cache) == fresh
    assert _index_bytes(archive, tmp_path / "healed.json", cache) == fresh
    assert json.loads(files[1].read_text())["entries"] != forged["entries"]  # rewritten from the layer


def test_captured_reads_bypass_the_cache(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "image.tar", [BASE, TOP])
    cache = layers.LayerCache(tmp_path / "cache")
    layers.index_archive(archive, tmp_path / "index.json", cache)
    index = layers.read_archive(archive, capture=lambda path: path == "etc/c", cache=cache)
    assert index.captured == {"etc/c": b"c"}


def test_the_cache_directory_names_the_rules_that_shape_an_index(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = [layers.LayerCache(tmp_path).dir]
    monkeypatch.setattr(layers, "BUILD_ONLY_PATHS", frozenset({*layers.BUILD_ONLY_PATHS, "etc/other"}))
    dirs.append(layers.LayerCache(tmp_path).dir)
    monkeypatch.setattr(layers, "INDEX_VERSION", layers.INDEX_VERSION + 1)
    dirs.append(layers.LayerCache(tmp_path).dir)
    assert len(set(dirs)) == 3


def test_the_rootfs_phase_indexes_through_the_cache(tmp_path: Path) -> None:
    from assembler.phases.rootfs import LAYERS_INDEX, flatten_and_index

    archive = docker_archive(tmp_path / "image.tar", [BASE, TOP])
    cache = layers.LayerCache(tmp_path / "cache")
    for run in ("first", "second"):
        out = tmp_path / run
        out.mkdir()
        flatten_and_index(archive, out, 1_700_000_000, cache)
    assert (tmp_path / "first" / LAYERS_INDEX).read_bytes() == (tmp_path / "second" / LAYERS_INDEX).read_bytes()
    assert (tmp_path / "first" / LAYERS_INDEX).read_bytes() == _index_bytes(archive, tmp_path / "plain.json", None)
    assert len(list(cache.dir.glob("*.json"))) == 2


def test_the_flattener_parses_only_the_layers_it_has_not_seen(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Its parsed headers are kept by diff_id beside the index: a last-step change parses the new layer only,
    and the rootfs is the same bytes as one flattened without the cache."""
    import tarfile

    from assembler.rootfs import flatten

    cache = layers.LayerCache(tmp_path / "cache")
    flatten.flatten(docker_archive(tmp_path / "one.tar", [BASE, TOP]), tmp_path / "one-rootfs.tar",
                    source_date_epoch=1_700_000_000, members=cache.members)
    assert len(list(cache.members.root.glob("*.json"))) == 2
    changed = [*TOP[:2], E("etc/d", b"the last step changed")]
    archive = docker_archive(tmp_path / "two.tar", [BASE, changed])
    parsed: list[int] = []
    real = tarfile.TarFile.getmembers

    def counting(self: tarfile.TarFile) -> list[tarfile.TarInfo]:
        members = real(self)
        if not any(m.name == "manifest.json" for m in members):  # a layer, not the outer archive
            parsed.append(len(members))
        return members

    monkeypatch.setattr(tarfile.TarFile, "getmembers", counting)
    cached = flatten.flatten(archive, tmp_path / "cached.tar", source_date_epoch=1_700_000_000,
                             members=cache.members)
    assert parsed == [len(changed)]
    monkeypatch.undo()
    plain = flatten.flatten(archive, tmp_path / "plain.tar", source_date_epoch=1_700_000_000)
    assert cached.sha256 == plain.sha256
    assert (tmp_path / "cached.tar").read_bytes() == (tmp_path / "plain.tar").read_bytes()


def test_a_damaged_forged_or_mismatched_header_list_is_parsed_again(tmp_path: Path) -> None:
    from assembler.rootfs import flatten

    archive = docker_archive(tmp_path / "image.tar", [BASE, TOP])
    cache = layers.LayerCache(tmp_path / "cache")
    fresh = flatten.flatten(archive, tmp_path / "fresh.tar", source_date_epoch=1, members=cache.members).sha256
    files = sorted(cache.members.root.glob("*.json"))
    files[0].write_text("{not json")
    forged = json.loads(files[1].read_text())
    forged["members"][0][10] = -512  # an offset before the layer
    files[1].write_text(json.dumps(forged))
    assert flatten.flatten(archive, tmp_path / "again.tar", source_date_epoch=1, members=cache.members).sha256 == fresh
    resized = json.loads(files[1].read_text())
    assert resized["members"] != forged["members"]  # rewritten from the layer
    resized["size"] += 512  # kept for a layer of another size: not used for this one
    resized["members"] = []
    files[1].write_text(json.dumps(resized))
    assert flatten.flatten(archive, tmp_path / "sized.tar", source_date_epoch=1, members=cache.members).sha256 == fresh


def test_gc_prunes_header_lists_with_the_indexes(tmp_path: Path) -> None:
    from assembler.rootfs import flatten

    archive = docker_archive(tmp_path / "image.tar", [BASE, TOP])
    cache = layers.LayerCache(tmp_path / "cache")
    flatten.flatten(archive, tmp_path / "rootfs.tar", source_date_epoch=1, members=cache.members)
    layers.index_archive(archive, tmp_path / "index.json", cache)
    kept = layers.read_archive(archive).layers[0].diff_id
    (cache.root / "members-v0").mkdir()  # another format's
    assert cache.prune({kept}) == 2
    assert sorted(p.stem for p in cache.members.root.glob("*")) == [kept.removeprefix("sha256:")]
    assert sorted(p.stem for p in cache.dir.glob("*")) == [kept.removeprefix("sha256:")]
    assert not (cache.root / "members-v0").exists()
