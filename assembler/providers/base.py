"""What every publish provider shares: the build's outputs, progress reporting, the receipt, the protocol.

A provider takes the artefacts `assembler build` left in out/IMAGE/ (converting from the raw disk when the
format it needs is missing), uploads them, and returns a Receipt: IDs, URLs and digests, never credentials.
Names and tags carry the artefact's content digest, so publishing the same image twice finds the first copy
and does nothing (the receipt then has `noop: true`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from assembler import __version__
from assembler.config import Arch
from assembler.errors import ConfigError
from assembler.errors import PublishError as PublishError  # raised by every provider, and by the registry client
from assembler.fsutil import sha256_file, write_json
from assembler.log import log
from assembler.manifest import MANIFEST, Manifest, read_manifest
from assembler.registry import NullTask as NullTask
from assembler.registry import ProgressReader as ProgressReader
from assembler.registry import ProgressTask as ProgressTask

CHUNK = 1 << 20
# Environment variables whose values must never reach a receipt or a log (defence in depth: options
# never hold credentials, the SDKs read them from their own chains).
SECRET_ENV = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCOUNT_KEY|CONNECTION_STRING|SAS|API_KEY",
                        re.IGNORECASE)
REDACTED = "***"


class ProviderName(StrEnum):
    OCI = "oci"
    AWS = "aws"
    AZURE = "azure"
    GCP = "gcp"
    OPENSTACK = "openstack"
    VSPHERE = "vsphere"


# ---------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Artifact:
    format: str
    path: Path
    sha256: str

    @property
    def short(self) -> str:
        return self.sha256[:12]

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class BuildOutputs:
    """out/IMAGE/ and its manifest.json, as `assembler build` wrote them."""

    image: str
    directory: Path
    manifest: Manifest

    @classmethod
    def load(cls, directory: Path) -> BuildOutputs:
        if not (directory / MANIFEST).is_file():
            raise ConfigError(f"no build outputs in {directory} ({MANIFEST} is missing)",
                              resolution=f"run `assembler build {directory.name}` first, or pass --out")
        manifest = read_manifest(directory)
        return cls(image=manifest.image, directory=directory, manifest=manifest)

    @property
    def firmware(self) -> tuple[str, ...]:
        disk = self.manifest.disk
        return tuple(disk.firmware) if disk and disk.firmware else ("bios", "uefi")

    @property
    def architecture(self) -> Arch:
        """What the disk boots on (amd64 for manifests older than the field): every provider names it."""
        return self.manifest.disk.architecture if self.manifest.disk else "amd64"

    @property
    def secure_boot(self) -> bool:
        """Signed for UEFI Secure Boot: publish asks the cloud for Secure Boot and a vTPM. A BIOS-only image
        has no ESP to verify, so the manifest's flag alone is not enough."""
        disk = self.manifest.disk
        return bool(disk and disk.secure_boot) and "uefi" in self.firmware

    def find(self, fmt: str) -> Artifact | None:
        """The output in `fmt`, its digest computed from the file: what is published is what is named."""
        entry = self.manifest.output(fmt)
        if entry is None:
            return None
        path = self.directory / entry.path  # a plain file name: the manifest model refuses any other
        if not path.is_file():
            raise ConfigError(f"{path} is listed in {MANIFEST} but missing",
                              resolution=f"rebuild: `assembler build {self.image}`")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ConfigError(f"{path} changed since the build: its sha256 is {actual[:12]}, "
                              f"{MANIFEST} says {(entry.sha256 or 'nothing')[:12]}",
                              resolution=f"rebuild: `assembler build {self.image}` (out/ holds what the "
                                         "build made; publish never sends a file it did not make)")
        return Artifact(fmt, path, actual)

    def artifact(self, fmt: str) -> Artifact:
        """The output in `fmt`, converted from the raw (or qcow2) disk into out/IMAGE/ when it is missing."""
        found = self.find(fmt)
        if found is not None:
            return found
        return self._convert(fmt)

    def _convert(self, fmt: str) -> Artifact:
        from assembler import formats  # only needed when the build did not produce the format

        source = self.find("raw") or self.find("qcow2")
        if source is None:
            raise ConfigError(f"{self.image} has no {fmt} output and no raw or qcow2 disk to convert from",
                              resolution=f"`assembler build {self.image} --format {fmt}`")
        dest = self.directory / formats.output_name(self.image, fmt)
        if dest.is_file():  # converted by an earlier publish
            return Artifact(fmt, dest, sha256_file(dest))
        log.info("converting %s to %s for publishing", source.path.name, fmt)
        options = {"load": False} if fmt == "kubevirt" else None
        result = formats.convert(source.path, fmt, dest, image_name=self.image, options=options,
                                 source_date_epoch=self.manifest.source_date_epoch, architecture=self.architecture)
        return Artifact(fmt, result.path, result.sha256)

    def labels(self, artifact: Artifact) -> dict[str, str]:
        """Versions and digests to attach as tags/labels/properties (each provider adapts the keys)."""
        labels = {
            "image": self.image,
            "assembler-version": __version__,
            "format": artifact.format,
            "disk-sha256": artifact.sha256,
        }
        if self.manifest.oci:
            labels["oci-digest"] = self.manifest.oci.digest
        if self.manifest.rootfs:
            labels["rootfs-sha256"] = self.manifest.rootfs.sha256
        return labels


# --------------------------------------------------------------------------------------------- progress


class Progress(Protocol):
    def task(self, label: str, total: int) -> ProgressTask: ...


class NullProgress:
    def task(self, label: str, total: int) -> ProgressTask:
        return NullTask()


def chunks(path: Path, size: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of consecutive `size`-byte pieces of a file from `start`."""
    with path.open("rb") as handle:
        handle.seek(start)
        offset = start
        while data := handle.read(size):
            yield offset, data
            offset += len(data)


# ---------------------------------------------------------------------------------------------- receipt


# Query parameters that carry credentials: an Azure SAS token (sig and the fields it signs), pre-signed S3
# and GCS URLs, OAuth tokens, API keys.
_CREDENTIAL_PARAM = re.compile(r"^(sig|se|st|sp|sv|spr|sr|srt|ss|sk[a-z]*|saoid|suoid|scid|sdd|ses|signature|"
                               r"expires|awsaccesskeyid|x-amz-.*|x-goog-.*|.*token.*|.*key)$", re.IGNORECASE)


def bare_url(url: str) -> str:
    """The URL without what authenticates it (user:password@, credential query parameters), which a receipt
    must never carry; everything else (a console URL's region, its fragment) stays."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not _CREDENTIAL_PARAM.match(k)])
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


class PublishedItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str  # "containerdisk", "artifact", "ami", "snapshot", "blob", "image", ...
    id: str  # provider ID: digest reference, ami-..., blob name, image name
    url: str = ""
    digest: str = ""  # sha256 of the artefact or the registry manifest digest
    reused: bool = False  # it was already there: nothing was uploaded or created

    @field_validator("url", "id")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return bare_url(value) if "://" in value else value


class Receipt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    image: str
    target: dict[str, Any] = Field(default_factory=dict)  # non-secret options (registry, bucket, region)
    sources: list[dict[str, str]] = Field(default_factory=list)  # format, file, sha256
    items: list[PublishedItem] = Field(default_factory=list)

    @property
    def noop(self) -> bool:
        return bool(self.items) and all(item.reused for item in self.items)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [value for name, value in env.items() if SECRET_ENV.search(name) and len(value) >= 4]


def scrub(text: str, secrets: list[str]) -> str:
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def write_receipt(directory: Path, receipt: Receipt) -> Path:
    """out/IMAGE/publish-PROVIDER.json, atomically; any credential value from the environment is redacted."""
    data = receipt.model_dump(mode="json") | {"noop": receipt.noop}
    text = json.dumps(data, sort_keys=True)
    clean = scrub(text, secret_values())
    if clean != text:
        log.warning("a credential value appeared in the %s receipt; it was redacted", receipt.provider)
    path = directory / f"publish-{receipt.provider}.json"
    write_json(path, json.loads(clean))
    return path


# ---------------------------------------------------------------------------------------------- plugins


@dataclass(frozen=True)
class PublishContext:
    outputs: BuildOutputs
    progress: Progress = field(default_factory=NullProgress)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@runtime_checkable
class Provider(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def formats(self) -> tuple[str, ...]: ...  # the formats it takes, preferred first

    @property
    def options_model(self) -> type[BaseModel]: ...

    @property
    def options(self) -> BaseModel: ...

    def configure(self, options: Mapping[str, Any]) -> Provider: ...

    def plan(self, ctx: PublishContext) -> list[str]: ...

    def publish(self, ctx: PublishContext) -> Receipt: ...


class BaseProvider:
    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    options_model: ClassVar[type[Options]] = Options

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.options_model.model_construct()

    def configure(self, options: Mapping[str, Any]) -> Self:
        try:
            parsed = self.options_model.model_validate(dict(options))
        except ValidationError as exc:
            raise ConfigError(f"invalid options for provider {self.name}", details=str(exc),
                              resolution=f"options of {self.name}: {option_help(self.options_model)}") from exc
        return type(self)(parsed)

    def plan(self, ctx: PublishContext) -> list[str]:
        raise NotImplementedError

    def publish(self, ctx: PublishContext) -> Receipt:
        raise NotImplementedError

    def target(self) -> dict[str, Any]:
        return self.options.model_dump(mode="json")

    def receipt(self, ctx: PublishContext, sources: list[Artifact], items: list[PublishedItem]) -> Receipt:
        return Receipt(provider=self.name, image=ctx.outputs.image, target=self.target(),
                       sources=[{"format": a.format, "file": a.path.name, "sha256": a.sha256} for a in sources],
                       items=items)


def option_flag(name: str) -> str:
    """The `assembler publish` flag of an options-model field: role_name is --role-name."""
    return "--" + name.replace("_", "-")


def option_help(model: type[BaseModel]) -> str:
    parts = []
    for name, info in model.model_fields.items():
        parts.append(f"{option_flag(name)}{' (required)' if info.is_required() else ''}")
    return ", ".join(parts) or "none"

