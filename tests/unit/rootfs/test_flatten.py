"""flatten() on hand-made image archives: overlay semantics and a deterministic output tar."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from assembler.errors import ConfigError
from assembler.fsutil import sha256_file
from assembler.rootfs.flatten import flatten
from assembler.tarindex import index_tar

SDE = 1_700_000_000
CAP = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # cap_net_raw+ep
CAP_BIN = "\x01\x00\x00\x02\xff\xfe\x00\x00"  # bytes >= 0x80 survive as bytes, not as UTF-8 text


@dataclass
class E:
    """One entry of a hand-made layer."""

    name: str
    data: bytes | None = None  # regular file when set
    kind: str = "file"  # file | dir | link | sym
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = SDE - 100
    pax: dict[str, str] = field(default_factory=dict)


def layer_bytes(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, e.mtime
            info.uname, info.gname = "someone", "somegroup"
            info.pax_headers = {"atime": "1234.5", "ctime": "1234.5", **e.pax}
            if e.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif e.kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
            elif e.kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
            data = e.data or b""
            info.size = len(data) if e.kind == "file" else 0
            tar.addfile(info, io.BytesIO(data) if e.kind == "file" else None)
    return buf.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def docker_archive(path: Path, layers: list[list[E]]) -> Path:
    blobs = [layer_bytes(entries) for entries in layers]
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
    config = json.dumps({
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"step {i}"} for i in range(len(blobs))] + [{"empty_layer": True}],
    }).encode()
    names = [f"{d[7:]}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": None, "Layers": names}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, blob in zip(names, blobs, strict=True):
            add_bytes(tar, name, blob)
        add_bytes(tar, "config.json", config)
        add_bytes(tar, "manifest.json", manifest)
    return path


def read_out(path: Path) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            handle = tar.extractfile(m) if m.isreg() else None
            out[m.name] = (m, handle.read() if handle else b"")
    return out


def run_flatten(tmp_path: Path, layers: list[list[E]]) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    archive = docker_archive(tmp_path / "image.tar", layers)
    result = flatten(archive, tmp_path / "rootfs.tar", source_date_epoch=SDE)
    assert result.sha256 == sha256_file(tmp_path / "rootfs.tar")
    # The index taken while writing is what a scan of the written tar finds, whatever the case (links, xattrs).
    if result.entries:  # (index_tar refuses an empty rootfs)
        scanned = index_tar(tmp_path / "rootfs.tar")
        assert (result.index.members, result.index.end, result.index.dot_slash) == \
            (scanned.members, scanned.end, scanned.dot_slash)
    return read_out(tmp_path / "rootfs.tar")


def test_whiteout_deletes_lower_file_and_never_appears(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [
        [E("a", kind="dir"), E("a/one", b"1"), E("a/two", b"2"), E("b", kind="dir"), E("b/c", b"c")],
        [E("a/.wh.one"), E(".wh.b")],
    ])
    assert sorted(out) == ["a", "a/two"]
    assert out["a/two"][1] == b"2"


def test_whiteout_applies_to_lower_layers_only(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [[E("x", b"old")], [E(".wh.x"), E("x", b"new")]])
    assert out["x"][1] == b"new"


def test_opaque_dir_hides_lower_content_but_keeps_its_own(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [
        [E("d", kind="dir"), E("d/x", b"x"), E("d/sub", kind="dir"), E("d/sub/y", b"y"), E("keep", b"k")],
        [E("d", kind="dir"), E("d/.wh..wh..opq"), E("d/z", b"z")],
    ])
    assert sorted(out) == ["d", "d/z", "keep"]


def test_file_replacing_directory_drops_the_subtree(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [[E("p", kind="dir"), E("p/q", b"q")], [E("p", b"now a file")]])
    assert sorted(out) == ["p"]
    assert out["p"][0].isreg()


def test_hardlink_whose_target_is_whited_out_keeps_the_data(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [
        [E("t", kind="dir"), E("t/target", b"hello", mode=0o4755),
         E("t/link", kind="link", target="t/target")],
        [E("t/.wh.target")],
    ])
    assert sorted(out) == ["t", "t/link"]
    info, data = out["t/link"]
    assert info.isreg() and data == b"hello" and info.mode == 0o4755


def test_hardlink_is_repointed_at_the_first_path_in_sort_order(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [[
        E("z", kind="dir"), E("z/target", b"data"), E("a", kind="dir"),
        E("a/link", kind="link", target="./z/target"),
        E("m", kind="link", target="z/target"),
    ]])
    names = list(out)
    assert out["a/link"][0].isreg() and out["a/link"][1] == b"data"
    for other in ("m", "z/target"):
        assert out[other][0].islnk() and out[other][0].linkname == "a/link"
        assert names.index(other) > names.index("a/link")


def test_overwritten_hardlink_target_breaks_the_link(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [
        [E("f", b"old"), E("g", kind="link", target="f")],
        [E("f", b"new")],
    ])
    assert out["f"][0].isreg() and out["f"][1] == b"new"
    assert out["g"][0].isreg() and out["g"][1] == b"old"


def test_xattrs_are_preserved_other_pax_dropped(tmp_path: Path) -> None:
    pax = {"SCHILY.xattr.security.capability": CAP, "SCHILY.xattr.user.bin": CAP_BIN}
    out = run_flatten(tmp_path, [[E("ping", b"elf", mode=0o755, pax=pax)]])
    info = out["ping"][0]
    assert info.pax_headers["SCHILY.xattr.security.capability"] == CAP
    assert info.pax_headers["SCHILY.xattr.user.bin"] == CAP_BIN
    assert not {"atime", "ctime"} & set(info.pax_headers)


def test_mtimes_clamped_and_owners_numeric(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [[E("new", b"n", mtime=SDE + 999, uid=1000, gid=1001),
                                  E("old", b"o", mtime=5)]])
    assert out["new"][0].mtime == SDE and out["old"][0].mtime == 5
    assert (out["new"][0].uid, out["new"][0].gid) == (1000, 1001)
    assert all(info.uname == "" and info.gname == "" for info, _ in out.values())


def test_entries_sorted_parents_first_no_root_no_dot_prefix(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [[
        E("./", kind="dir"), E("./b", kind="dir"), E("./b/x", b""), E("./a-b", b""), E("./a", kind="dir"),
        E("./a/c", b""), E("./sym", kind="sym", target="/etc/x"),
    ]])
    assert list(out) == ["a", "a-b", "a/c", "b", "b/x", "sym"]
    assert out["sym"][0].linkname == "/etc/x"


def test_output_is_deterministic(tmp_path: Path) -> None:
    layers = [[E("d", kind="dir"), E("d/f", b"f" * 5000, pax={"SCHILY.xattr.user.k": "v"})], [E("d/g", b"g")]]
    first = flatten(docker_archive(tmp_path / "1.tar", layers), tmp_path / "o1.tar", source_date_epoch=SDE)
    second = flatten(docker_archive(tmp_path / "2.tar", layers), tmp_path / "o2.tar", source_date_epoch=SDE)
    assert first.sha256 == second.sha256
    assert (tmp_path / "o1.tar").read_bytes() == (tmp_path / "o2.tar").read_bytes()


def test_layer_info_reports_history_and_whiteouts(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "image.tar", [[E("a", b"a")], [E(".wh.a"), E("b", b"b")]])
    result = flatten(archive, tmp_path / "out.tar", source_date_epoch=SDE)
    summary = [(layer.created_by, layer.entries, layer.whiteouts) for layer in result.layers]
    assert summary == [("step 0", 1, 0), ("step 1", 1, 1)]
    with tarfile.open(archive) as tar:
        config = tar.extractfile("config.json")
        assert config is not None
        assert result.image_id == "sha256:" + hashlib.sha256(config.read()).hexdigest()
    assert result.entries == 1 and result.size == (tmp_path / "out.tar").stat().st_size


def test_oci_layout_with_gzip_layers(tmp_path: Path) -> None:
    lower = gzip.compress(layer_bytes([E("etc", kind="dir"), E("etc/os", b"x")]))
    blobs = [lower, layer_bytes([E("etc/.wh.os")])]
    config = json.dumps({"rootfs": {"diff_ids": ["sha256:0", "sha256:1"]}}).encode()

    def desc(data: bytes) -> dict[str, str]:
        return {"digest": "sha256:" + hashlib.sha256(data).hexdigest()}

    manifest = json.dumps({"config": desc(config), "layers": [desc(b) for b in blobs]}).encode()
    index = json.dumps({"manifests": [desc(manifest)]}).encode()
    with tarfile.open(tmp_path / "oci.tar", "w") as tar:
        for blob in [config, manifest, *blobs]:
            add_bytes(tar, "blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)
        add_bytes(tar, "index.json", index)
    flatten(tmp_path / "oci.tar", tmp_path / "out.tar", source_date_epoch=SDE)
    assert list(read_out(tmp_path / "out.tar")) == ["etc"]


def test_not_an_image_is_a_config_error_and_leaves_nothing(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "junk.tar", "w") as tar:
        add_bytes(tar, "hello", b"hi")
    with pytest.raises(ConfigError, match="not an image archive"):
        flatten(tmp_path / "junk.tar", tmp_path / "out.tar", source_date_epoch=SDE)
    assert not (tmp_path / "out.tar").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["junk.tar"]
    with pytest.raises(ConfigError, match="not found"):
        flatten(tmp_path / "missing.tar", tmp_path / "out.tar", source_date_epoch=SDE)


def test_flatten_and_index_side_by_side_equal_one_after_the_other(tmp_path: Path) -> None:
    from assembler.phases.rootfs import LAYERS_INDEX, ROOTFS_TAR, flatten_and_index
    from assembler.rootfs import layers

    archive = docker_archive(tmp_path / "image.tar", [
        [E("etc", kind="dir"), E("etc/a", b"a"), E("etc/b", b"b")],
        [E("etc/.wh.a"), E("etc/c", b"c")],
    ])
    out = tmp_path / "out"
    out.mkdir()
    result = flatten_and_index(archive, out, SDE)
    alone = flatten(archive, tmp_path / "alone.tar", source_date_epoch=SDE)
    assert result.sha256 == alone.sha256 == sha256_file(out / ROOTFS_TAR)
    layers.index_archive(archive, tmp_path / "alone.json")
    assert (out / LAYERS_INDEX).read_bytes() == (tmp_path / "alone.json").read_bytes()
    assert len(json.loads((out / LAYERS_INDEX).read_text())["layers"]) == 2


def test_flatten_and_index_reports_a_broken_archive(tmp_path: Path) -> None:
    from assembler.phases.rootfs import flatten_and_index

    archive = tmp_path / "image.tar"
    archive.write_bytes(b"not a tar")
    with pytest.raises(ConfigError, match="not a tar archive"):
        flatten_and_index(archive, tmp_path, SDE)
    assert not (tmp_path / "layers.json").exists() and not (tmp_path / "rootfs.tar").exists()


def test_the_build_bases_own_apt_config_never_reaches_the_rootfs(tmp_path: Path) -> None:
    from assembler.packages import BUILD_ONLY_APT_CONF

    conf = "etc/apt/apt.conf.d/"
    out = run_flatten(tmp_path, [
        [E("etc", kind="dir"), E("etc/apt", kind="dir"), E(conf, kind="dir"),
         E(BUILD_ONLY_APT_CONF, b'Acquire::Check-Valid-Until "false";\n'), E(conf + "70debconf", b"x")],
        [E("etc/hostname", b"h\n")],
    ])
    assert BUILD_ONLY_APT_CONF not in out and conf + "70debconf" in out


# Lower layers often hold a/b/c without entries for a and a/b (images not built by the classic builder).
IMPLICIT_CASES = {
    "whiteout of an implicit parent": ([[E("a/b/c", b"c")], [E(".wh.a")]], {}),
    "opaque implicit directory stays, empty": ([[E("a/b/c", b"c")], [E("a/.wh..wh..opq")]], {"a": "dir"}),
    "a file replaces an implicit directory": ([[E("a/b/c", b"c")], [E("a", b"f")]], {"a": "file"}),
    "a symlink replaces an implicit directory": ([[E("a/b/c", b"c")], [E("a", kind="sym", target="x")]],
                                                 {"a": "sym"}),
    "a path below a lower file makes it a directory": ([[E("a", b"f")], [E("a/c", b"c")]],
                                                       {"a": "dir", "a/c": "file"}),
}


def _kind(info: tarfile.TarInfo) -> str:
    return "dir" if info.isdir() else "sym" if info.issym() else "file"


@pytest.mark.parametrize("case", sorted(IMPLICIT_CASES))
def test_implicit_parents_follow_the_engines_rules(tmp_path: Path, case: str) -> None:
    from assembler.rootfs import layers as layer_index

    stack, expected = IMPLICIT_CASES[case]
    out = run_flatten(tmp_path, stack)
    assert {name: _kind(info) for name, (info, _) in out.items()} == expected
    merged = layer_index.merge(layer_index.read_archive(tmp_path / "image.tar"))
    kinds = {"symlink": "sym"}
    assert {p: kinds.get(m.entry.type, m.entry.type) for p, m in merged.items()} == expected


def test_an_engines_empty_mount_point_placeholders_are_dropped_real_files_kept(tmp_path: Path) -> None:
    out = run_flatten(tmp_path, [
        [E("etc", kind="dir"), E("etc/hostname", b"base-host\n")],
        [E("etc/resolv.conf", b""), E("etc/hosts", b""), E("etc/hostname", b""), E("etc/issue", b"")],
        [E("run", kind="dir"), E("run/.containerenv", b""), E("etc/hosts", b"127.0.0.1 localhost\n")],
    ])
    assert "etc/resolv.conf" not in out and "run/.containerenv" not in out  # Podman's placeholders
    assert "etc/issue" in out  # any other empty file stays
    assert out["etc/hosts"][1] == b"127.0.0.1 localhost\n"  # written by a step: kept
    assert out["etc/hostname"][1] == b""  # emptied over a lower file: the engine's view is empty too
