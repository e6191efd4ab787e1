"""`assembler convert`: real conversions of a small raw disk made here (qemu-img), and each bad input as one
error that says what to do."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from assembler.fsutil import sha256_file
from tests.unit.cli.invoke import error_of, run

MIB = 1 << 20


@pytest.fixture()
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "demo.raw"
    with path.open("wb") as handle:
        handle.write(b"\xeb\x63\x90" + bytes(range(256)) * 8)
        handle.truncate(MIB)
    return path


def _format_of(path: Path) -> str:
    done = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True,
                          check=True)
    return str(json.loads(done.stdout)["format"])


def test_each_format_lands_beside_the_disk_and_is_listed_as_json(disk: Path) -> None:
    result = run("convert", str(disk), "-f", "qcow2", "-f", "vmdk", "-f", "qcow2", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [(r["format"], Path(r["path"])) for r in listed] == [
        ("qcow2", disk.parent / "demo.qcow2"), ("vmdk", disk.parent / "demo.vmdk")]  # repeated -f: once
    for row in listed:
        path = Path(row["path"])
        assert row["sha256"] == sha256_file(path)
        assert (row["virtual_size"], row["file_size"]) == (MIB, path.stat().st_size)
        assert _format_of(path) == row["format"]
    said = " ".join(result.stderr.split())  # the console wraps at its width
    assert all(f"sha256 {row['sha256'][:16]}" in said for row in listed)


def test_name_and_output_directory(disk: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = run("convert", str(disk), "--format", "qcow2-compressed", "--output", str(out), "--name", "web")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["web.qcow2"]
    assert result.stdout == ""  # without --json, stdout stays empty for the caller's pipes


def test_one_format_may_go_to_a_file_path(disk: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.img"
    result = run("convert", str(disk), "-f", "qcow2", "-o", str(target), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["path"] == str(target)
    assert _format_of(target) == "qcow2"


def test_several_formats_need_an_output_directory(disk: Path, tmp_path: Path) -> None:
    error = error_of(run("convert", str(disk), "-f", "qcow2", "-f", "vhd", "-o", str(tmp_path / "x.img")))
    assert error.brief == "--output must be a directory when converting to several formats"
    assert error.resolution == "pass an existing directory, or one --format"
    assert not (tmp_path / "x.img").exists()


def test_a_missing_disk(tmp_path: Path) -> None:
    error = error_of(run("convert", str(tmp_path / "nope.raw"), "-f", "qcow2"))
    assert error.brief == f"no such disk: {tmp_path / 'nope.raw'}"
    assert "raw, qcow2, vmdk or vhd" in error.resolution


def test_an_unknown_format_names_the_known_ones(disk: Path) -> None:
    error = error_of(run("convert", str(disk), "-f", "qcow"))
    assert error.brief == "unknown format: qcow"
    assert "qcow2" in error.resolution and "ova" in error.resolution
    assert sorted(p.name for p in disk.parent.iterdir()) == ["demo.raw"]  # refused before converting anything


def test_converting_a_disk_into_its_own_format_in_place_is_refused(disk: Path) -> None:
    qcow2 = disk.with_suffix(".qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(qcow2)], check=True)
    before = sha256_file(qcow2)
    error = error_of(run("convert", str(qcow2), "-f", "qcow2"))
    assert error.brief == f"output would overwrite the source: {qcow2}"
    assert error.resolution == "pass --output"
    assert sha256_file(qcow2) == before


def test_the_format_option_is_required(disk: Path) -> None:
    result = run("convert", str(disk))
    assert result.exit_code == 2  # a usage error, from the option parser
    assert "--format" in result.output
