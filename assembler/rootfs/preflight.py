"""Preflight: probe every external endpoint a build needs before spending minutes on it.

Each endpoint (a registry for a non-local base image, an apt mirror, a pinned download) is probed in
parallel with a short timeout. Unreachable required endpoints become ONE error listing each URL, what it
was for, why it failed, and how to point the build at a mirror instead; unreachable optional ones are
returned so the caller can skip them without waiting again.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from assembler.errors import AssemblerError
from assembler.mirrors import EXAMPLE, KNOWN_REGISTRIES, KNOWN_URLS, MirrorMap

PROBE_TIMEOUT = 3.0
# Docker Hub's registry API does not live at docker.io itself.
REGISTRY_HOSTS = {"docker.io": "registry-1.docker.io"}
MISSING = (404, 410)


class PreflightError(AssemblerError):
    """Endpoints the build needs cannot be reached."""


@dataclass(frozen=True)
class Endpoint:
    """One external location: `url` is what is probed; `upstream` what the image names (before mirrors)."""

    url: str
    purpose: str
    upstream: str
    required: bool = True
    kind: str = "file"  # "file": a pinned file; "mirror": a mirror's root; "registry": a registry's /v2/ API


def registry_probe_url(image_ref: str) -> str:
    """The registry API root serving an image reference: docker.io/x@sha256:.. -> https://registry-1.docker.io/v2/."""
    host = image_ref.split("/", 1)[0]
    return f"https://{REGISTRY_HOSTS.get(host, host)}/v2/"


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the endpoint answers, else a short reason."""
    parsed = urllib.parse.urlsplit(endpoint.url)
    if parsed.scheme == "file":
        return None if Path(urllib.parse.unquote(parsed.path)).exists() else "no such file"
    request = urllib.request.Request(endpoint.url, method="HEAD", headers={"User-Agent": "assembler preflight"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        # Any HTTP answer proves the host is there (a registry answers /v2/ with 401); a pinned file that
        # the server does not have is as fatal as no server, so say so now.
        if endpoint.kind == "file" and exc.code in MISSING:
            return f"HTTP {exc.code} (the server has no such file)"
        return None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            return None  # something answered TLS; the pull itself will judge the certificate
        return str(exc.reason)
    except (TimeoutError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def probe_all(endpoints: list[Endpoint], timeout: float = PROBE_TIMEOUT) -> dict[str, str]:
    """Probe in parallel; {url: reason} for every endpoint that did not answer within the timeout."""
    unique = {e.url: e for e in endpoints}
    results: dict[str, str | None] = {}

    def worker(endpoint: Endpoint) -> None:
        results[endpoint.url] = probe(endpoint, timeout)

    # Daemon threads: a resolver stuck past the deadline must not hold up the build or the exit.
    threads = [threading.Thread(target=worker, args=(e,), daemon=True) for e in unique.values()]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 1.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {url: results.get(url) or f"no answer within {timeout:.0f} s"
            for url in unique if url not in results or results[url] is not None}


def check(endpoints: list[Endpoint], mirrors: MirrorMap, *, image: str,
          timeout: float = PROBE_TIMEOUT) -> dict[str, str]:
    """Raise PreflightError if a required endpoint is unreachable; return the unreachable optional ones."""
    unreachable = probe_all(endpoints, timeout)
    failed = [e for e in endpoints if e.required and e.url in unreachable]
    if failed:
        raise PreflightError(
            f"{image}: cannot reach {len(failed)} external endpoint(s) the build needs "
            f"(probed with a {timeout:.0f} s timeout)",
            details="\n".join(f"  - {e.url} ({e.purpose}): {unreachable[e.url]}" for e in failed),
            resolution=_resolution(failed, mirrors),
        )
    return {e.url: unreachable[e.url] for e in endpoints if e.url in unreachable}


def _resolution(failed: list[Endpoint], mirrors: MirrorMap) -> str:
    prefixes = sorted({_known_prefix(e) for e in failed})
    return (f"run the build where these are reachable, or serve them from internal mirrors and map "
            f"{', '.join(prefixes)} in the mirror map (now: {mirrors.source}); checksums and digests stay "
            f"pinned whatever the mirror. {EXAMPLE}")


def _known_prefix(endpoint: Endpoint) -> str:
    """The mirror-map key a user would set for this endpoint (the longest known prefix of its upstream)."""
    known = KNOWN_REGISTRIES if endpoint.kind == "registry" else KNOWN_URLS
    matches = [k for k in known if endpoint.upstream.startswith(k)]
    if matches:
        return max(matches, key=len)
    parsed = urllib.parse.urlsplit(endpoint.upstream)
    return f"{parsed.scheme}://{parsed.netloc}/" if parsed.netloc else endpoint.upstream.split("/", 1)[0] + "/"
