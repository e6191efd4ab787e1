"""Build inputs in the BOM: collected deterministically, valid SPDX, restored byte for byte, size-capped;
and the rebuild's verdict on what differs."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from assembler import bom, inputs, rebuild
from assembler.config import resolve_image
from assembler.errors import ConfigError

RECIPE = """name: demo-base
suite: bookworm
source_date_epoch: 1747699200
tag: localhost/assembler/base:demo
"""
SHA = "ab" * 32
STATUS = b"Package: hello\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.10-3\n"


def rootfs(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in {"var/lib/dpkg/status": STATUS, "etc/os-release": b"ID=debian\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def rootfs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "rootfs"
    (root / "demo-base").mkdir(parents=True)
    (root / "demo-base" / "recipe.yaml").write_text(RECIPE)
    monkeypatch.setenv("ASSEMBLER_ROOTFS_DIR", str(root))
    return root


def _context(parent: Path, *, declared: bool = True) -> Path:
    ctx = parent / "demo"
    (ctx / "files" / "sub").mkdir(parents=True)
    (ctx / "Containerfile").write_text("ARG SOURCE_DATE_EPOCH\nFROM localhost/assembler/base:demo\n"
                                       "COPY files/ /opt/\n")
    base = "base: demo-base\n" if declared else ""
    (ctx / "image.yaml").write_text(f"{base}source_date_epoch: 1747699200\nbuild_args: {{B: '2', A: '1'}}\n")
    (ctx / "checks.yaml").write_text("checks: []\n")
    (ctx / "packages.lock").write_text("hello=2.10-3\n")
    (ctx / "packages.lock").chmod(0o600)
    (ctx / "downloads.yaml").write_text(
        f"- {{name: tool, url: 'https://example.org/tool', sha256: '{SHA}', dest: downloads/tool}}\n")
    (ctx / "files" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (ctx / "files" / "run.sh").chmod(0o755)
    (ctx / "files" / "sub" / "blob.bin").write_bytes(bytes(range(256)))
    (ctx / "files" / "link").symlink_to("run.sh")
    (ctx / "downloads").mkdir()
    (ctx / "downloads" / "tool").write_bytes(b"x" * 4096)  # fetched by the build: never recorded
    return ctx


def _tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    found: dict[str, tuple[str, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("l", 0, os.readlink(path).encode())
        elif path.is_dir():
            found[rel] = ("d", path.stat().st_mode & 0o7777, b"")
        else:
            found[rel] = ("f", path.stat().st_mode & 0o7777, path.read_bytes())
    return found


def test_build_inputs_collects_context_recipe_args_and_pins(tmp_path: Path, rootfs_dir: Path) -> None:
    spec = resolve_image(str(_context(tmp_path)))
    found = inputs.build_inputs(spec)
    assert found["image"] == "demo" and found["containerfile"] == "Containerfile"
    assert found["source_date_epoch"] == 1747699200
    assert list(found["build_args"].items()) == [("A", "1"), ("B", "2")]
    assert found["base"] == {"name": "demo-base", "declared": True, "recipe": RECIPE}
    assert [(d["name"], d["sha256"]) for d in found["downloads"]] == [("tool", SHA)]
    paths = [e["path"] for e in found["context"]]
    assert paths == sorted(paths) and "downloads" not in paths and "downloads/tool" not in paths
    assert {"Containerfile", "image.yaml", "checks.yaml", "packages.lock", "downloads.yaml",
            "files/run.sh", "files/sub/blob.bin", "files/link"} <= set(paths)
    by_path = {e["path"]: e for e in found["context"]}
    assert by_path["files/run.sh"]["mode"] == "0755" and by_path["packages.lock"]["mode"] == "0600"
    assert "base64" in by_path["files/sub/blob.bin"] and by_path["files/link"]["target"] == "run.sh"


def test_undeclared_base_is_found_by_the_from_tag(tmp_path: Path, rootfs_dir: Path) -> None:
    found = inputs.build_inputs(resolve_image(str(_context(tmp_path, declared=False))))
    assert found["base"] == {"name": "demo-base", "declared": False, "recipe": RECIPE}


def test_spdx_with_inputs_is_deterministic_and_validates(tmp_path: Path, rootfs_dir: Path) -> None:
    spec = resolve_image(str(_context(tmp_path / "a")))
    docs = []
    for _ in range(2):
        docs.append(bom.build_spdx(rootfs(tmp_path), image="demo", rootfs_sha256=SHA,
                                   source_date_epoch=1747699200, build_inputs=inputs.build_inputs(spec)))
    assert bom.document_bytes(docs[0]) == bom.document_bytes(docs[1])
    assert bom.validate_spdx(docs[0]) == []
    annotation = docs[0]["annotations"][0]
    assert annotation["annotationDate"] == "2025-05-20T00:00:00Z" and annotation["annotationType"] == "OTHER"
    # Read back from the written bytes, as `rebuild` does.
    assert bom.build_inputs_of(json.loads(bom.document_bytes(docs[0]))) == inputs.build_inputs(spec)
    assert bom.build_inputs_of(bom.build_spdx(rootfs(tmp_path), image="demo", rootfs_sha256=SHA,
                                              source_date_epoch=1)) is None


def test_restored_context_is_byte_identical(tmp_path: Path, rootfs_dir: Path) -> None:
    original = _context(tmp_path / "a")
    doc = bom.build_spdx(rootfs(tmp_path), image="demo", rootfs_sha256=SHA, source_date_epoch=1747699200,
                         build_inputs=inputs.build_inputs(resolve_image(str(original))))
    recorded = rebuild.inputs_of(json.loads(bom.document_bytes(doc)))
    restored = inputs.restore_context(recorded, tmp_path / "b")
    assert restored.name == "demo"
    want = {k: v for k, v in _tree(original).items() if k.split("/")[0] != "downloads"}
    assert _tree(restored) == want
    assert os.stat(restored / "files" / "run.sh").st_mtime == 1747699200
    recipe = inputs.restore_recipe(recorded, tmp_path / "rootfs2")
    assert recipe is not None and recipe.tag == "localhost/assembler/base:demo"
    assert (tmp_path / "rootfs2" / "demo-base" / "recipe.yaml").read_text() == RECIPE


def test_oversized_context_is_refused_with_a_fix(tmp_path: Path, rootfs_dir: Path) -> None:
    ctx = _context(tmp_path)
    (ctx / "files" / "big.img").write_bytes(b"\0" * (inputs.MAX_CONTEXT_BYTES + 1))
    with pytest.raises(ConfigError) as info:
        inputs.build_inputs(resolve_image(str(ctx)))
    assert "too large to embed" in info.value.brief and "downloads.yaml" in info.value.resolution
    assert "files/big.img" in info.value.details


def test_unsafe_paths_in_a_bom_are_refused(tmp_path: Path) -> None:
    evil = {"format": 1, "image": "demo", "source_date_epoch": 0, "context": [
        {"path": "../../etc/passwd", "type": "file", "mode": "0644", "text": "x"}]}
    with pytest.raises(ConfigError, match="unsafe path"):
        inputs.restore_context(evil, tmp_path)
    assert not (tmp_path.parent / "etc").exists()


def test_bom_without_inputs_says_how_to_get_one() -> None:
    with pytest.raises(ConfigError, match="no build inputs"):
        rebuild.inputs_of({"spdxVersion": "SPDX-2.3"})


def _facts(rootfs_sha: str = SHA, oci: str = "sha256:1", raw: str | None = "r1",
           packages: dict[str, dict[str, str]] | None = None) -> dict[str, object]:
    return {"rootfs_sha256": rootfs_sha, "oci_digest": oci, "raw_sha256": raw,
            "packages": packages if packages is not None else {"hello": {"version": "2.10-3"}}}


def test_compare_fails_on_rootfs_packages_or_disk_differences() -> None:
    assert rebuild.compare(_facts(), _facts()) == ([], [])
    errors, _ = rebuild.compare(_facts(), _facts(rootfs_sha="cd" * 32, packages={}))
    assert errors[0].startswith("rootfs sha256: BOM " + SHA) and errors[1] == "Debian packages differ: hello"
    # The embedded BOM leaves out the engine's digests: another OCI image ID must not change the disk.
    errors, notes = rebuild.compare(_facts(), _facts(oci="sha256:2"))
    assert errors == [] and "OCI image ID" in notes[0]
    errors, _ = rebuild.compare(_facts(), _facts(oci="sha256:2", raw="r2"))
    assert errors == ["raw disk sha256: original r1 != rebuilt r2"]


@pytest.mark.parametrize("entry", ["Containerfile", {"path": "x", "type": "file", "mode": "0644"},
                                   {"path": "x", "type": "fifo"}, {"type": "dir", "mode": "0755"}])
def test_damaged_entries_are_refused(tmp_path: Path, entry: object) -> None:
    with pytest.raises(ConfigError, match="damaged entry"):
        inputs.restore_context({"format": 1, "image": "demo", "source_date_epoch": 0, "context": [entry]}, tmp_path)


@pytest.mark.parametrize("order", ["link-first", "file-first"])
def test_a_crafted_bom_never_writes_through_a_symlink(tmp_path: Path, order: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = {"path": "d", "type": "symlink", "target": str(outside)}
    payload = {"path": "d/pwned", "type": "file", "mode": "4755", "text": "#!/bin/sh\nid\n"}
    entries = [link, payload] if order == "link-first" else [payload, link]
    evil = {"format": 1, "image": "demo", "source_date_epoch": 0, "context": entries}
    with pytest.raises(ConfigError, match="cannot be restored safely"):
        inputs.restore_context(evil, tmp_path / "restore")
    assert list(outside.iterdir()) == []


def test_restored_files_lose_setuid_bits(tmp_path: Path) -> None:
    entry = {"path": "tool", "type": "file", "mode": "6755", "text": "x"}
    restored = inputs.restore_context({"format": 1, "image": "demo", "source_date_epoch": 0, "context": [entry]},
                                      tmp_path)
    assert (restored / "tool").stat().st_mode & 0o7777 == 0o755


def test_what_dockerignore_keeps_from_the_engine_never_reaches_the_bom(tmp_path: Path) -> None:
    ctx = tmp_path / "img"
    (ctx / "files").mkdir(parents=True)
    (ctx / "secrets").mkdir()
    (ctx / "Containerfile").write_text("FROM scratch\nCOPY files/ /\n")
    (ctx / "files" / "a.sh").write_text("echo a\n")
    (ctx / ".env").write_text("API_TOKEN=hunter2\n")
    (ctx / "secrets" / "token").write_text("hunter2\n")
    (ctx / ".dockerignore").write_text("# local only\n.env\nsecrets\n")
    paths = [e["path"] for e in inputs.context_files(ctx)]
    assert paths == [".dockerignore", "Containerfile", "files", "files/a.sh"]
    assert "hunter2" not in json.dumps(inputs.context_files(ctx))
