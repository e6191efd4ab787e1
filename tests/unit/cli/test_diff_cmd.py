"""`assembler diff`: two rootfs tars, one with a package upgraded: the packages and files that changed, as
text and JSON, and --exit-code for scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assembler import bom
from assembler.rootfs.downloads import Fetched
from tests.unit.bomdata import STATUS, rootfs, tar
from tests.unit.cli.invoke import run


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    before = rootfs(tmp_path)
    (tmp_path / "after").mkdir()
    after = tar(tmp_path / "after" / "rootfs.tar", {
        "usr/lib/os-release": b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
        "var/lib/dpkg/status": STATUS.replace(b"Version: 2.10-3", b"Version: 2.12-1"),
        "var/lib/dpkg/info/hello.list": b"/.\n/usr\n/usr/bin\n/usr/bin/hello\n",
        "var/lib/dpkg/info/libc6:amd64.list": b"/lib/x86_64-linux-gnu/libc.so.6\n",
        "usr/bin/hello": b"\x7fELF, newer",
    }, {"etc/os-release": "../usr/lib/os-release"})
    return before, after


def test_the_upgrade_and_the_files_it_changed(pair: tuple[Path, Path]) -> None:
    result = run("diff", str(pair[0]), str(pair[1]))
    assert result.exit_code == 0, result.output  # a difference is a finding, not a failure, without --exit-code
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "packages: 1 upgraded" in lines
    assert "~ hello 2.10-3 -> 2.12-1 (upgraded) rootfs" in lines
    assert "files: 0 added, 0 removed, 2 changed" in lines
    assert "~ /usr/bin/hello file 0644 11 B (4 -> 11, content) [hello]" in lines


def test_json_lists_every_change(pair: tuple[Path, Path]) -> None:
    result = run("diff", str(pair[0]), str(pair[1]), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["identical"] is False
    assert [(p["name"], p["from"], p["to"]) for p in report["packages"]["upgraded"]] == [("hello", "2.10-3", "2.12-1")]
    assert sorted(f["path"] for f in report["files"]) == ["usr/bin/hello", "var/lib/dpkg/status"]


def test_limit_shortens_each_steps_file_list(pair: tuple[Path, Path]) -> None:
    result = run("diff", str(pair[0]), str(pair[1]), "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "… 1 more (--limit 0 shows all, --json lists them)" in result.stdout
    assert "/var/lib/dpkg/status" not in result.stdout


def test_exit_code_is_1_only_when_they_differ(pair: tuple[Path, Path]) -> None:
    differ = run("diff", str(pair[0]), str(pair[1]), "--exit-code")
    assert differ.exit_code == 1
    assert isinstance(differ.exception, SystemExit)  # the exit status asked for, not an error
    same = run("diff", str(pair[0]), str(pair[0]), "--exit-code")
    assert same.exit_code == 0, same.output
    assert "no difference in files, packages" in same.stdout


def test_a_changed_download_pin_shows_what_changed(tmp_path: Path) -> None:
    def spdx(name: str, *pins: Fetched) -> Path:
        return bom.write_document(bom.spdx_document(bom.BomInput(
            image="demo", rootfs_sha256="ab" * 32, source_date_epoch=0, dpkg=bom.DpkgDb(), downloads=pins)),
            tmp_path / name)

    url = "https://dl.k8s.io/release/v1.30.14/bin/linux/amd64/"
    a = spdx("a.spdx.json", Fetched("kubelet", url + "kubelet", "11" * 32, "downloads/kubelet", "fetched"),
             Fetched("kubeadm", url + "kubeadm", "22" * 32, "downloads/kubeadm", "fetched"))
    b = spdx("b.spdx.json", Fetched("kubelet", url + "kubelet", "33" * 32, "downloads/kubelet", "fetched"),
             Fetched("crictl", url + "crictl", "44" * 32, "downloads/crictl", "fetched"))
    result = run("diff", str(a), str(b), "--exit-code")
    assert result.exit_code == 1, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert f"+ crictl {url}crictl" in lines
    assert f"- kubeadm {url}kubeadm" in lines
    assert f"~ kubelet sha256 {'11' * 32} -> {'33' * 32}" in lines
