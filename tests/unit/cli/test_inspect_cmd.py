"""`assembler inspect`: a rootfs tar with a dpkg database (tests/unit/bomdata.py), as JSON and as tables."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.bomdata import rootfs
from tests.unit.cli.invoke import error_of, run


def test_the_report_as_json(tmp_path: Path) -> None:
    tar = rootfs(tmp_path)
    result = run("inspect", str(tar), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["kind"], report["target"]) == ("rootfs", str(tar))
    assert report["os"]["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert [(p["name"], p["version"], p["source"]) for p in report["packages"]] == [
        ("hello", "2.10-3", "hello"), ("libc6", "2.36-9+deb12u10", "glibc")]  # `gone` was purged


def test_the_tables_name_the_os_and_every_package(tmp_path: Path) -> None:
    tar = rootfs(tmp_path)
    result = run("inspect", str(tar))
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert lines[0] == f"{tar} (rootfs) Debian GNU/Linux 12 (bookworm)"
    assert "packages (2)" in lines
    assert "hello 2.10-3 amd64" in lines  # a package built from its own source names none
    assert "libc6 2.36-9+deb12u10 amd64 glibc" in lines


def test_no_packages_gives_their_count_only(tmp_path: Path) -> None:
    result = run("inspect", str(rootfs(tmp_path)), "--no-packages")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "packages: 2"
    assert "libc6" not in result.stdout


def test_a_file_it_cannot_read(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a disk\n")
    error = error_of(run("inspect", str(junk)))
    assert error.brief == f"cannot tell what {junk} is"
    assert error.resolution == "pass a disk image, a tar or out/IMAGE"
