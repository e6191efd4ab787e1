"""The OCI distribution API, the few calls assembler needs (requests): blobs by digest, manifests by tag.

Used by `publish --provider oci` and by the package store's registry source. Credentials come from the
standard container auth files ($REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
~/.docker/config.json `auths`), Basic or Bearer-token challenges; they are never logged.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urljoin

import requests

from assembler.errors import ConfigError, PublishError
from assembler.fsutil import CHUNK, sha256_bytes

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"  # a blob's file name (what `oras pull` restores it as)
TIMEOUT = 60


class ProgressTask(Protocol):
    def advance(self, amount: int) -> None: ...

    def close(self) -> None: ...


class NullTask:
    def advance(self, amount: int) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressReader:
    """A read-only file wrapper that reports bytes read (requests sends its body with Content-Length)."""

    def __init__(self, handle: IO[bytes], size: int, task: ProgressTask) -> None:
        self._handle, self._size, self._task = handle, size, task
        self._left = size

    def __len__(self) -> int:
        return self._size

    def read(self, amount: int = -1) -> bytes:
        # Never past `size`: the handle may be a whole archive positioned at one member.
        amount = self._left if amount is None or amount < 0 else min(amount, self._left)
        data = self._handle.read(amount)
        self._left -= len(data)
        self._task.advance(len(data))
        return data


def _auth_files() -> list[Path]:
    files = []
    if env := os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env))
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(runtime) / "containers" / "auth.json")
    files.append(Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json")
    return files


def registry_credentials(host: str) -> tuple[str, str] | None:
    """user, password for `host` from the first auth file that has it (base64 `auth` entries only)."""
    for path in _auth_files():
        try:
            auths = json.loads(path.read_text()).get("auths", {})
        except (OSError, json.JSONDecodeError):
            continue
        for key in (host, f"https://{host}", f"http://{host}"):
            encoded = (auths.get(key) or {}).get("auth")
            if encoded:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
                return user, password
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Registry:
    """The few distribution API calls a push needs; connection failures become PublishError."""

    def __init__(self, host: str, *, insecure: bool = False, session: requests.Session | None = None) -> None:
        self.host = host
        self.base = f"{'http' if insecure else 'https'}://{host}/v2/"
        self.session = session or requests.Session()
        self._creds = registry_credentials(host)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        url = url if url.startswith("http") else urljoin(self.base, url)
        try:
            resp = self.session.request(method, url, timeout=TIMEOUT, **kwargs)
            if resp.status_code == 401 and self._authenticate(resp):
                body = kwargs.get("data")
                if hasattr(body, "read"):  # a consumed stream cannot be re-sent: caller retries
                    raise PublishError(f"registry {self.host} asked for credentials mid-upload",
                                       resolution="re-run the publish (now authenticated from the start)")
                resp = self.session.request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise PublishError(f"cannot reach the registry {self.host}: {type(exc).__name__}", details=str(exc),
                               resolution="check that the registry is up and --registry/--insecure are right; "
                                          "re-running resumes (blobs already pushed are skipped)") from exc
        return resp

    def _authenticate(self, resp: requests.Response) -> bool:
        scheme, params = _challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic" and self._creds and self.session.auth is None:
            self.session.auth = self._creds
            return True
        if scheme == "bearer" and "realm" in params:
            query = {k: v for k, v in params.items() if k in ("service", "scope")}
            token_resp = self.session.get(params["realm"], params=query, auth=self._creds, timeout=TIMEOUT)
            if token_resp.ok:
                data = token_resp.json()
                token = data.get("token") or data.get("access_token")
                self.session.headers["Authorization"] = f"Bearer {token}"
                return True
        return False

    def check(self, resp: requests.Response, what: str, ok: tuple[int, ...]) -> requests.Response:
        if resp.status_code not in ok:
            hint = ("log in (podman/docker login writes the auth file assembler reads)" if resp.status_code in
                    (401, 403) else "read the registry's answer above")
            raise PublishError(f"registry {self.host}: {what} failed (HTTP {resp.status_code})",
                               details=resp.text[:2000], resolution=hint)
        return resp

    def ping(self) -> None:
        resp = self.request("GET", "")
        self.check(resp, "API version check", (200, 401))

    def has_blob(self, repo: str, digest: str) -> bool:
        return self.request("HEAD", f"{repo}/blobs/{digest}").status_code == 200

    def push_blob(self, repo: str, digest: str, size: int, opener: Callable[[], IO[bytes]],
                  task: ProgressTask) -> None:
        start = self.check(self.request("POST", f"{repo}/blobs/uploads/"), f"starting upload to {repo}", (202,))
        location = urljoin(self.base, start.headers["Location"])
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        with opener() as handle:
            body = ProgressReader(handle, size, task)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            resp = self.request("PUT", location, data=body, headers=headers)
        self.check(resp, f"upload of blob {digest[:19]} to {repo}", (201,))

    def manifest_digest(self, repo: str, ref: str) -> str | None:
        resp = self.request("HEAD", f"{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        if resp.status_code == 404:
            return None
        self.check(resp, f"manifest lookup {repo}:{ref}", (200,))
        return resp.headers.get("Docker-Content-Digest")

    def put_manifest(self, repo: str, ref: str, body: bytes) -> str:
        resp = self.request("PUT", f"{repo}/manifests/{ref}", data=body, headers={"Content-Type": OCI_MANIFEST})
        self.check(resp, f"manifest upload {repo}:{ref}", (201,))
        return resp.headers.get("Docker-Content-Digest") or "sha256:" + sha256_bytes(body)

    def pull_blob(self, repo: str, digest: str) -> Iterator[bytes]:
        """The blob's bytes as they arrive (the caller verifies them against the digest)."""
        resp = self.request("GET", f"{repo}/blobs/{digest}", stream=True)
        self.check(resp, f"download of blob {digest[:19]} from {repo}", (200,))
        try:
            yield from resp.iter_content(CHUNK)
        finally:
            resp.close()


def parse_repository(target: str) -> tuple[str, bool, str]:
    """(HOST[:PORT], insecure, REPO) of http(s)://HOST[:PORT]/REPO (http: a local registry without TLS)."""
    match = re.fullmatch(r"(https?)://([A-Za-z0-9.-]+(?::[0-9]+)?)/([a-z0-9][a-z0-9._/-]*)", target)
    if not match:
        shown = re.sub(r"//[^/@]*@", "//", target)  # never echo credentials written into a URL
        raise ConfigError(f"not a registry repository URL: {shown}",
                          resolution="use http(s)://HOST[:PORT]/REPO, e.g. http://127.0.0.1:5000/assembler/packages")
    return match.group(2), match.group(1) == "http", match.group(3)


def repository(target: str) -> tuple[Registry, str]:
    """A client and the repository for http(s)://HOST[:PORT]/REPO."""
    host, insecure, repo = parse_repository(target)
    return Registry(host, insecure=insecure), repo
