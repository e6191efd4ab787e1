"""diff: synthetic docker-archives (no engine) -> layer alignment, attributed file and package changes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from assembler import bom, diff
from assembler.bom import compare_versions
from assembler.rootfs import layers
from assembler.rootfs.downloads import Fetched

STEPS = ["/bin/sh -c #(nop) ADD base", "/bin/sh -c apt-get install -y tool", "/bin/sh -c #(nop) COPY file:x in /etc/x"]


def _status(*packages: tuple[str, str]) -> bytes:
    return "".join(f"Package: {n}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {v}\n\n"
                   for n, v in packages).encode()


def _layer(files: dict[str, bytes | None], mtime: int) -> bytes:
    """A layer tar; None marks a directory, a name starting with '.wh.' a whiteout."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755 if name.startswith("usr/bin/") else 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _archive(path: Path, layer_files: list[dict[str, bytes | None]], steps: list[str], mtime: int = 1) -> Path:
    blobs = [_layer(files, mtime) for files in layer_files]
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created_by": s} for s in steps]}).encode()
    with tarfile.open(path, "w") as tf:
        names = []
        for i, blob in enumerate(blobs):
            names.append(f"{i:064x}/layer.tar")
            info = tarfile.TarInfo(names[-1])
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
        for name, data in (("config.json", config),
                           ("manifest.json", json.dumps([{"Config": "config.json", "Layers": names}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


BASE = {"etc": None, "etc/old": b"old", "usr": None, "usr/bin": None, "var/lib/dpkg/info": None,
        "var/lib/dpkg/status": _status(("libfoo", "1.0-1")), "var/lib/dpkg/info/libfoo.list": b"/etc/old\n"}


def _images(tmp_path: Path, *, with_tool: bool, mtime: int = 1) -> Path:
    run: dict[str, bytes | None] = {"var/lib/dpkg/status": _status(("libfoo", "1.1-1"), *(
        [("tool", "2.0-1")] if with_tool else []))}
    if with_tool:
        run |= {"usr/bin/tool": b"#!/bin/sh\n", "var/lib/dpkg/info/tool.list": b"/usr/bin/tool\n",
                "etc/.wh.old": b""}
    return _archive(tmp_path / f"img-{with_tool}-{mtime}.tar", [BASE, run, {"etc/x": b"x"}], STEPS, mtime)


def test_added_package_files_and_whiteout_are_attributed_to_the_run_step(tmp_path: Path) -> None:
    report = diff.diff(str(_images(tmp_path, with_tool=False)), str(_images(tmp_path, with_tool=True)))
    assert not report["identical"]
    assert [p["name"] for p in report["packages"]["added"]] == ["tool"]
    assert report["packages"]["added"][0]["layer"] == 1
    assert report["packages"]["added"][0]["step"] == "RUN apt-get install -y tool"
    changes = {f["path"]: f for f in report["files"]}
    assert set(changes) == {"usr/bin/tool", "var/lib/dpkg/info/tool.list", "etc/old", "var/lib/dpkg/status"}
    assert changes["var/lib/dpkg/status"]["change"] == "changed" and changes["var/lib/dpkg/status"]["content"]
    assert changes["usr/bin/tool"]["packages"] == ["tool"] and changes["usr/bin/tool"]["mode"] == "0755"
    assert changes["var/lib/dpkg/info/tool.list"]["packages"] == ["tool"]
    assert changes["etc/old"]["change"] == "removed" and changes["etc/old"]["layer"] == 1
    assert [row["status"] for row in report["layers"]] == ["same", "changed", "same"]


def test_identical_trees_with_other_layer_times_are_identical(tmp_path: Path) -> None:
    report = diff.diff(str(_images(tmp_path, with_tool=True, mtime=1)), str(_images(tmp_path, with_tool=True,
                                                                                     mtime=2)))
    assert report["identical"] and report["files"] == []
    assert [row["status"] for row in report["layers"]] == ["same-content"] * 3


def test_upgrade_and_downgrade_are_named(tmp_path: Path) -> None:
    a = diff.Side("a", "bom", packages={"k8s": {"version": "1.30.1", "architecture": "amd64"},
                                        "x": {"version": "2.0", "architecture": "amd64"}})
    b = diff.Side("b", "bom", packages={"k8s": {"version": "1.30.3", "architecture": "amd64"},
                                        "x": {"version": "1:1.0", "architecture": "amd64"}})
    report = diff.diff_sides(a, b)
    assert [(p["name"], p["from"], p["to"]) for p in report["packages"]["upgraded"]] == [
        ("k8s", "1.30.1", "1.30.3"), ("x", "2.0", "1:1.0")]
    assert "files (one side has no file tree: a disk or an SPDX file)" in report["not_compared"]
    assert compare_versions("1:1.0", "2.0") > 0


K8S = "https://dl.k8s.io/release/v1.30.14/bin/linux/amd64/"
MIRROR = "https://mirror.example/dl.k8s.io/release/v1.30.14/bin/linux/amd64/"


def _bom(path: Path, *pins: Fetched) -> Path:
    """An SPDX file whose download records are what the BOM writer makes of the build's Fetched records."""
    doc = bom.spdx_document(bom.BomInput(image="demo", rootfs_sha256="ab" * 32, source_date_epoch=0,
                                         dpkg=bom.DpkgDb(), downloads=pins))
    return bom.write_document(doc, path)


def _pin(name: str, sha: str, base: str = K8S) -> Fetched:
    return Fetched(name, base + name, sha * 32, f"downloads/{name}", "fetched")


def test_download_pins_differ_by_checksum_or_url(tmp_path: Path) -> None:
    a = _bom(tmp_path / "a.spdx.json", _pin("kubelet", "11"), _pin("kubeadm", "22"), _pin("crictl", "33"),
             _pin("helm", "44"))
    b = _bom(tmp_path / "b.spdx.json", _pin("kubelet", "55"), _pin("kubeadm", "22", MIRROR), _pin("crictl", "33"),
             _pin("cni", "66"))
    report = diff.diff(str(a), str(b))
    assert report["downloads"] == {
        "added": [{"name": "cni", "url": K8S + "cni", "sha256": "66" * 32}],
        "removed": [{"name": "helm", "url": K8S + "helm", "sha256": "44" * 32}],
        "changed": [
            {"name": "kubeadm", "fields": ["url"], "from_url": K8S + "kubeadm", "to_url": MIRROR + "kubeadm",
             "from_sha256": "22" * 32, "to_sha256": "22" * 32},
            {"name": "kubelet", "fields": ["sha256"], "from_url": K8S + "kubelet", "to_url": K8S + "kubelet",
             "from_sha256": "11" * 32, "to_sha256": "55" * 32},
        ],
    }
    assert not report["identical"]


def test_a_pin_read_back_as_fetched_reads_it_is_the_same_pin(tmp_path: Path) -> None:
    # No name (named after its URL) and a "sha256:" prefix: Fetched.from_mapping's reading of the same record.
    a = diff.Side("a", "bom", downloads=[{"url": K8S + "kubelet", "sha256": "sha256:" + "11" * 32}])
    b = diff.Side("b", "bom", downloads=[{"name": "kubelet", "url": K8S + "kubelet", "sha256": "11" * 32}])
    assert diff.diff_downloads(a, b) == {"added": [], "removed": [], "changed": []}


def test_content_digest_treats_holes_as_zeros(tmp_path: Path) -> None:
    sparse, dense = tmp_path / "sparse", tmp_path / "dense"
    with sparse.open("wb") as handle:
        handle.write(b"A" * 100)
        handle.truncate(4 << 20)
    dense.write_bytes(b"A" * 100 + bytes((4 << 20) - 100))
    with sparse.open("rb") as s, dense.open("rb") as d:
        assert diff.content_digest(s, 0, 4 << 20) == diff.content_digest(d, 0, 4 << 20)
        assert diff.content_digest(s, 0, 4 << 20) != diff.content_digest(s, 0, 2 << 20)


def test_layer_index_round_trips(tmp_path: Path) -> None:
    index = layers.index_archive(_images(tmp_path, with_tool=True), tmp_path / "layers.json")
    assert layers.load_index(tmp_path / "layers.json") == index
    assert index.layers[1].whiteouts == ("etc/old",)
    assert layers.step_label("|1 X=y /bin/sh -c make") == "RUN make"
