"""The apt repository fixture against real apt and gpgv, with a private apt configuration (host state untouched)."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.debrepo import DebRepo

pytestmark = pytest.mark.integration

# Talk to loopback directly, whatever proxy the host or CI sets.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def build_deb(workdir: Path, name: str, version: str) -> Path:
    tree = workdir / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share/doc" / name).mkdir(parents=True)
    (tree / "usr/share/doc" / name / "README").write_text(f"{name} {version}\n")
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: Test <test@invalid>\n"
        f"Priority: optional\nSection: misc\nDescription: tiny test package {name}\n")
    deb = workdir / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)], check=True, capture_output=True)
    return deb


class Apt:
    """apt-get with every directory and config file of its own: it neither reads nor writes the host's."""

    def __init__(self, workdir: Path, url: str, keyring: Path) -> None:
        self.workdir = workdir
        for sub in ("lists/partial", "cache/archives/partial", "state", "log", "download", "empty.d"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "status").write_text("")
        (workdir / "sources.list").write_text(f"deb [signed-by={keyring}] {url} bookworm main\n")
        empty = workdir / "empty.d"
        options = {
            "Dir::Etc::Main": "/dev/null", "Dir::Etc::Parts": empty,
            "Dir::Etc::SourceList": workdir / "sources.list", "Dir::Etc::SourceParts": empty,
            "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": empty,
            "Dir::Etc::TrustedParts": empty, "Dir::State": workdir / "state",
            "Dir::State::Lists": workdir / "lists", "Dir::State::Status": workdir / "status",
            "Dir::Cache": workdir / "cache", "Dir::Log": workdir / "log", "APT::Architecture": "amd64",
            "APT::Sandbox::User": "root", "Acquire::Languages": "none", "Acquire::PDiffs": "false",
            "Acquire::http::Proxy::127.0.0.1": "DIRECT",
        }
        # APT_CONFIG is read before apt.conf.d, so Dir::Etc::Parts set here keeps the host's snippets out.
        (workdir / "apt.conf").write_text("".join(f'{key} "{value}";\n' for key, value in options.items()))
        self.env = {**ENV, "APT_CONFIG": str(workdir / "apt.conf")}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["apt-get", *args], cwd=self.workdir / "download", env=self.env, capture_output=True,
                              text=True, check=False)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done


def fetch_status(url: str) -> int:
    try:
        with DIRECT.open(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def assert_signed(repo: DebRepo) -> None:
    inrelease = repo.archive / "dists/bookworm/InRelease"
    subprocess.run(["gpgv", "--keyring", str(repo.keyring), str(inrelease)], check=True, capture_output=True)
    subprocess.run(["gpgv", "--keyring", str(repo.keyring), str(repo.archive / "dists/bookworm/Release.gpg"),
                    str(repo.archive / "dists/bookworm/Release")], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> DebRepo:
    repo = DebRepo(tmp_path / "repo")
    repo.add([build_deb(tmp_path, "hello-a", "1.0"), build_deb(tmp_path, "hello-b", "1.0")])
    repo.publish()
    return repo


def test_layout_and_signatures(repo: DebRepo) -> None:
    assert repo.packages() == {"hello-a": "1.0", "hello-b": "1.0"}
    assert (repo.archive / "pool/main/h/hello-a/hello-a_1.0_amd64.deb").is_file()
    release = (repo.archive / "dists/bookworm/Release").read_text()
    for line in ("Suite: bookworm", "Codename: bookworm", "Acquire-By-Hash: yes", "Components: main"):
        assert line in release
    assert "Valid-Until" not in release
    packages = (repo.binary / "Packages").read_text()
    for field in ("Priority: optional", "Section: misc", "Filename: pool/main/h/hello-a/", "SHA256: ", "Size: "):
        assert field in packages
    assert len(list((repo.binary / "by-hash/SHA256").iterdir())) == 2
    assert repo.keyring.read_bytes()[:1] != b"-"  # binary, not armored
    assert_signed(repo)
    agents = subprocess.run(["pgrep", "-f", f"gpg-agent.*{repo.gnupghome}"], capture_output=True, text=True)
    assert agents.stdout == "", "gpg-agent left running"


def test_apt_follows_a_moved_repository(repo: DebRepo, tmp_path: Path) -> None:
    with repo.serve() as url:
        assert url == repo.url()
        apt = Apt(tmp_path / "apt", url, repo.keyring)
        update = apt("update")
        output = update.stdout + update.stderr
        for bad in ("NO_PUBKEY", "not signed", "W:", "E:"):
            assert bad not in output, output
        assert any("/by-hash/SHA256/" in path for path in repo.requests), repo.requests
        apt("download", "hello-a")
        assert (tmp_path / "apt/download/hello-a_1.0_amd64.deb").is_file()

        old_hashes = {p.name for p in (repo.binary / "by-hash/SHA256").iterdir()}
        old_deb = repo.archive / "pool/main/h/hello-a/hello-a_1.0_amd64.deb"
        assert repo.bump("hello-a") == ("1.0", "1.0+moved1")
        assert repo.packages() == {"hello-a": "1.0+moved1", "hello-b": "1.0"}
        assert not old_deb.exists()
        assert fetch_status(f"{url}/pool/main/h/hello-a/hello-a_1.0_amd64.deb") == 404
        new_hashes = {p.name for p in (repo.binary / "by-hash/SHA256").iterdir()}
        assert new_hashes and not new_hashes & old_hashes
        for digest in old_hashes:
            assert fetch_status(f"{url}/dists/bookworm/main/binary-amd64/by-hash/SHA256/{digest}") == 404
        assert_signed(repo)

        apt("update")
        apt("download", "hello-a")
        assert (tmp_path / "apt/download/hello-a_1.0+moved1_amd64.deb").is_file()
        pinned = apt("download", "hello-a=1.0", check=False)
        assert pinned.returncode != 0 and "'1.0' for 'hello-a' was not found" in pinned.stderr
    with pytest.raises(RuntimeError):
        repo.url()
