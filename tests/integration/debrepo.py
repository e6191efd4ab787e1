"""A real Debian-format apt repository on loopback, made from real .debs and signed with a throw-away key.

Layout, indices and signatures follow deb.debian.org (pool paths, InRelease + Release.gpg, Acquire-By-Hash), so
apt, mmdebstrap and gpgv accept it as they would the mirror. `bump()` moves it the way the mirror moves: a newer
version replaces a package, the old .deb and the old by-hash indices disappear, and a pinned build breaks.
Needs dpkg-dev (dpkg-scanpackages), gnupg and gpgv.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import lzma
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

UID = "assembler test repo <test@invalid>"
# gpg-agent's sockets live in GNUPGHOME (no /run/user here); a Unix socket path may not exceed 108 bytes.
MAX_SOCKET_PATH = 100


def _fields(deb: Path) -> dict[str, str]:
    out = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True).stdout
    fields: dict[str, str] = {}
    for line in out.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


class DebRepo:
    def __init__(self, root: Path, *, suite: str = "bookworm", component: str = "main", arch: str = "amd64") -> None:
        self.root, self.suite, self.component, self.arch = root, suite, component, arch
        self.archive = root / "debian"
        self.dists = self.archive / "dists" / suite
        self.binary = self.dists / component / f"binary-{arch}"
        self.requests: list[str] = []
        self._url: str | None = None
        self.binary.mkdir(parents=True, exist_ok=True)
        (self.archive / "pool" / component).mkdir(parents=True, exist_ok=True)
        self.gnupghome = root / ".gnupg"
        if len(str(self.gnupghome / "S.gpg-agent.browser")) > MAX_SOCKET_PATH:
            self.gnupghome = Path(tempfile.mkdtemp(prefix="debrepo-gnupg-"))
        self.gnupghome.mkdir(mode=0o700, exist_ok=True)
        self.keyring = root / "keyring.gpg"
        with self._gpg() as gpg:
            gpg("--passphrase", "", "--quick-gen-key", UID, "ed25519", "sign", "never")
            self.keyring.write_bytes(gpg("--export", UID))

    @contextlib.contextmanager
    def _gpg(self) -> Iterator[Callable[..., bytes]]:
        env = {**os.environ, "GNUPGHOME": str(self.gnupghome)}

        def gpg(*args: str) -> bytes:
            return subprocess.run(["gpg", "--batch", "--yes", "--quiet", *args], check=True, env=env,
                                  capture_output=True).stdout

        try:
            yield gpg
        finally:
            # Each call may have started a gpg-agent for this home; none may outlive the fixture.
            subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, capture_output=True)

    def _pool_dir(self, fields: dict[str, str]) -> Path:
        source = fields.get("Source", fields["Package"]).split()[0]
        prefix = source[:4] if source.startswith("lib") else source[0]
        return self.archive / "pool" / self.component / prefix / source

    def add(self, debs: Iterable[Path]) -> None:
        for deb in debs:
            fields = _fields(deb)
            dest = self._pool_dir(fields)
            dest.mkdir(parents=True, exist_ok=True)
            version = fields["Version"].split(":", 1)[-1]  # file names drop the epoch, as in Debian's pool
            shutil.copyfile(deb, dest / f"{fields['Package']}_{version}_{fields['Architecture']}.deb")

    def _debs(self) -> dict[str, Path]:
        return {_fields(deb)["Package"]: deb for deb in sorted((self.archive / "pool").rglob("*.deb"))}

    def publish(self, *, valid_for: float | None = None) -> None:
        """Write and sign the indexes; `valid_for` seconds sets a Valid-Until (like debian-security's)."""
        # Without an override file the index lacks Priority/Section for debs that do not declare them.
        override = self.root / "override"
        override.write_text("".join(f"{name} {f.get('Priority', 'optional')} {f.get('Section', 'misc')}\n"
                                    for name, f in ((n, _fields(d)) for n, d in self._debs().items())))
        packages = subprocess.run(["dpkg-scanpackages", "--arch", self.arch, "pool", str(override)],
                                  cwd=self.archive, check=True, capture_output=True).stdout
        indices = {"Packages": packages, "Packages.xz": lzma.compress(packages)}
        by_hash = self.binary / "by-hash" / "SHA256"
        by_hash.mkdir(parents=True, exist_ok=True)
        current = set()
        lines = []
        for name, data in indices.items():
            digest = hashlib.sha256(data).hexdigest()
            (self.binary / name).write_bytes(data)
            (by_hash / digest).write_bytes(data)
            current.add(digest)
            lines.append(f" {digest} {len(data):>16} {self.component}/binary-{self.arch}/{name}\n")
        for old in by_hash.iterdir():
            if old.name not in current:  # the mirror stops serving superseded indices
                old.unlink()
        release = self.dists / "Release"
        until = "" if valid_for is None else (
            f"Valid-Until: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime(time.time() + valid_for))}\n")
        release.write_text(
            f"Origin: assembler-test\nLabel: assembler-test\nSuite: {self.suite}\nCodename: {self.suite}\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\n{until}"
            f"Architectures: {self.arch}\nComponents: {self.component}\nAcquire-By-Hash: yes\n"
            f"Description: throw-away test repository\nSHA256:\n{''.join(lines)}")
        with self._gpg() as gpg:
            gpg("--digest-algo", "SHA256", "--clearsign", "-o", str(self.dists / "InRelease"), str(release))
            gpg("--digest-algo", "SHA256", "--armor", "--detach-sign", "-o", str(self.dists / "Release.gpg"),
                str(release))

    def packages(self) -> dict[str, str]:
        index = self.binary / "Packages"
        found: dict[str, str] = {}
        for stanza in index.read_text().split("\n\n") if index.exists() else []:
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if line and not line[0].isspace())
            if "Package" in fields:
                found[fields["Package"]] = fields["Version"]
        return found

    def bump(self, package: str) -> tuple[str, str]:
        old = self._debs()[package]
        old_version = _fields(old)["Version"]
        new_version = old_version + "+moved1"
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            tree, built = Path(tmp) / "tree", Path(tmp) / "new.deb"
            subprocess.run(["dpkg-deb", "-R", str(old), str(tree)], check=True, capture_output=True)
            control = tree / "DEBIAN" / "control"
            control.write_text("".join(f"Version: {new_version}\n" if line.startswith("Version:") else line
                                       for line in control.read_text().splitlines(keepends=True)))
            subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(built)], check=True,
                           capture_output=True)
            self.add([built])
        old.unlink()
        self.publish()
        return old_version, new_version

    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the repository is not being served")
        return self._url

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        repo = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(repo.root), **kwargs)

            def send_head(self) -> Any:
                repo.requests.append(self.path)
                if not self.path.startswith("/debian/"):  # the key's home and scratch files are not the archive
                    self.send_error(404)
                    return None
                # Modification times have 1 s resolution: a move within the second would be answered 304.
                del self.headers["If-Modified-Since"]
                return super().send_head()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="debrepo", daemon=True)
        thread.start()
        self._url = f"http://127.0.0.1:{server.server_address[1]}/debian"
        try:
            yield self._url
        finally:
            self._url = None
            server.shutdown()
            server.server_close()
            thread.join()
