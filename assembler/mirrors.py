"""The mirror map: every external URL and registry a build reaches goes through it.

A build names upstream locations (https://dl.k8s.io/..., docker.io/library/ubuntu@sha256:...,
http://snapshot.ubuntu.com/ubuntu/...). The map rewrites them by longest matching prefix, so the same
Containerfiles build from internal mirrors on an air-gapped network. Checksums and digests never change
with the mirror: a mirror serves the same bytes or the build fails.

User override, first found wins: the YAML file named by $ASSEMBLER_MIRRORS, then
~/.config/assembler/mirrors.yaml. Example:

    urls:
      https://dl.k8s.io/: http://mirror.internal/dl.k8s.io/
      https://github.com/: http://mirror.internal/github/
      http://snapshot.ubuntu.com/ubuntu/: http://mirror.internal/ubuntu-snapshot/
      http://deb.debian.org/debian: http://mirror.internal/debian
    registries:
      docker.io/: registry.internal:5000/dockerhub/
    snapshots:   # where locked .debs and index files are found once the archive has moved on
      http://deb.debian.org/debian: http://snapshot.debian.org/archive/debian/{timestamp}
    package_registry: http://registry.internal:5000/assembler/packages   # a shared package store
    cache_from: http://registry.internal:5000/assembler/phases   # a shared phase store (as --cache-from)
    cache_to: http://registry.internal:5000/assembler/phases     # (as --cache-to)
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from assembler.errors import ConfigError

MIRRORS_ENV = "ASSEMBLER_MIRRORS"
REGISTRY_URL = r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?/[a-z0-9][a-z0-9._/-]*$"  # a repository, as registry.repository
USER_MIRRORS = Path("~/.config/assembler/mirrors.yaml")

# The upstream locations the shipped images use; listed so `assembler` can show them and so a user's
# file can be checked for typos against them. Defaults map each to itself.
KNOWN_URLS = (
    "https://dl.k8s.io/",
    "https://github.com/",
    "http://archive.ubuntu.com/ubuntu",
    "http://security.ubuntu.com/ubuntu",
    "http://snapshot.ubuntu.com/ubuntu",
    "http://deb.debian.org/debian",
    "http://deb.debian.org/debian-security",
)
KNOWN_REGISTRIES = ("docker.io/", "registry.k8s.io/")

EXAMPLE = (
    f"for example `export {MIRRORS_ENV}=/etc/assembler/mirrors.yaml` with that file holding:\n"
    "  urls:\n"
    "    https://dl.k8s.io/: http://mirror.internal/dl.k8s.io/\n"
    "    https://github.com/: http://mirror.internal/github/\n"
    "    http://snapshot.ubuntu.com/ubuntu/: http://mirror.internal/ubuntu-snapshot/\n"
    "  registries:\n"
    "    docker.io/: registry.internal:5000/dockerhub/"
)


def _matches(value: str, prefix: str) -> bool:
    """Prefix match on a path boundary: .../debian must not capture .../debian-security."""
    if not value.startswith(prefix):
        return False
    return prefix.endswith("/") or len(value) == len(prefix) or value[len(prefix)] in "/@:"


def _rewrite(value: str, table: dict[str, str]) -> str:
    matching = [p for p in table if _matches(value, p)]
    if not matching:
        return value
    prefix = max(matching, key=len)
    return table[prefix] + value[len(prefix):]


def normalize_image(ref: str) -> str:
    """Fully qualify a Docker Hub short name: ubuntu@sha256:.. -> docker.io/library/ubuntu@sha256:.."""
    first, sep, _rest = ref.partition("/")
    if not sep:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


class MirrorMap(BaseModel):
    """URL prefix and registry prefix rewrites; anything not listed is used as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: dict[str, str] = Field(default_factory=lambda: {u: u for u in KNOWN_URLS})
    registries: dict[str, str] = Field(default_factory=lambda: {r: r for r in KNOWN_REGISTRIES})
    # Dated snapshot mirrors of apt archives, where a lock's files are found after the archive moved on:
    # {"http://deb.debian.org/debian": "http://snapshot.debian.org/archive/debian/{timestamp}"}
    snapshots: dict[str, str] = Field(default_factory=dict)
    # An OCI registry repository where a team shares the package store (blobs by sha256, pushed by
    # `assembler bundle --push`): the last source of a locked file, e.g. http://127.0.0.1:5000/assembler/packages
    package_registry: str | None = Field(None, pattern=REGISTRY_URL)
    # The phase store shared through a registry (`--cache-from`/`--cache-to` and $ASSEMBLER_CACHE_FROM/_TO win).
    cache_from: str | None = Field(None, pattern=REGISTRY_URL)
    cache_to: str | None = Field(None, pattern=REGISTRY_URL)
    source: str = Field("built-in defaults", exclude=True, description="where the map was read from")

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        for prefix, target in value.items():
            for url in (prefix, target):
                if not url.startswith(("http://", "https://", "file://")):
                    raise ValueError(f"{url!r} is not an http(s):// or file:// URL")
        return value

    @field_validator("registries")
    @classmethod
    def _registries(cls, value: dict[str, str]) -> dict[str, str]:
        for prefix, target in value.items():
            for ref in (prefix, target):
                if "://" in ref or not ref.endswith("/"):
                    raise ValueError(f"registry prefix {ref!r} must look like host[:port]/[path/]")
        return value

    def url(self, url: str) -> str:
        """The URL to fetch instead of `url`."""
        return _rewrite(url, {**{u: u for u in KNOWN_URLS}, **self.urls})

    def image(self, ref: str) -> str:
        """The image reference to pull instead of `ref` (digest and tag kept as written)."""
        full = normalize_image(ref)
        if full.startswith("localhost/"):
            return ref  # built or loaded locally: never pulled
        return _rewrite(full, self.registries)


def load_mirror_map(path: Path | None = None) -> MirrorMap:
    """The user's map ($ASSEMBLER_MIRRORS, ~/.config/assembler/mirrors.yaml) merged over the identity defaults."""
    if path is None:
        env = os.environ.get(MIRRORS_ENV)
        if env:
            path = Path(env)
            if not path.is_file():
                raise ConfigError(f"{MIRRORS_ENV}={env} names no file",
                                  resolution=f"create it or unset {MIRRORS_ENV}; {EXAMPLE}")
        elif USER_MIRRORS.expanduser().is_file():
            path = USER_MIRRORS.expanduser()
        else:
            return MirrorMap()
    return _read(path)


def _read(path: Path) -> MirrorMap:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError("the file must be a mapping with `urls:` and/or `registries:`")
        defaults = MirrorMap()
        merged = {
            "urls": {**defaults.urls, **(data.pop("urls", None) or {})},
            "registries": {**defaults.registries, **(data.pop("registries", None) or {})},
            **data,
        }
        return MirrorMap.model_validate({**merged, "source": str(path)})
    except (OSError, yaml.YAMLError, ValueError, ValidationError) as exc:
        raise ConfigError(f"invalid mirror map {path}", details=str(exc),
                          resolution=f"fix the file; {EXAMPLE}") from exc
