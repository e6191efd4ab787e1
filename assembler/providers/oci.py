"""Push to any OCI registry through the distribution HTTP API (requests): no docker, skopeo or oras needed.

- The KubeVirt containerDisk (out/IMAGE/IMAGE-containerdisk.tar, a docker-archive) is pushed as an OCI image
  whose layer stays uncompressed (`application/vnd.oci.image.layer.v1.tar`): the layer digest is the diff_id,
  the config is the archive's own, so the manifest digest is the same on every push from the same build.
  Repository REPO/IMAGE-containerdisk, tag = first 12 hex of the image ID (the tag the build loads locally).
- Disk artefacts (qcow2 by default; `--artifacts qcow2,vmdk,ova,...`) are OCI artefacts in the ORAS style:
  config media type `application/vnd.assembler.disk.config.v1+json` (a small JSON: image, format, sha256),
  one layer holding the file (`org.opencontainers.image.title` = file name, so `oras pull` restores it).
  Repository REPO/IMAGE-disk, tag FORMAT-<12 hex of the file's sha256>.
- Idempotent: a tag whose manifest digest equals ours is left alone. Resumable per blob: blobs the registry
  already has (HEAD) are not sent again, so a re-run after a failure uploads only what is missing.
- Credentials: the standard container auth files ($REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
  ~/.docker/config.json `auths`), Basic or Bearer-token challenges; never logged or put in the receipt.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

from pydantic import Field, field_validator

from assembler.errors import ConfigError
from assembler.fsutil import canonical_json, sha256_bytes
from assembler.providers.base import (
    Artifact,
    BaseProvider,
    Options,
    Progress,
    PublishContext,
    PublishedItem,
    PublishError,
    Receipt,
)
from assembler.registry import OCI_MANIFEST, TITLE, Registry

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DISK_CONFIG = "application/vnd.assembler.disk.config.v1+json"
DISK_ARTIFACT = "application/vnd.assembler.disk.v1"
DISK_LAYER = "application/vnd.assembler.disk.{fmt}"
HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?$")


class OciOptions(Options):
    registry: str = Field(description="HOST[:PORT][/REPO]: where to push (REPO defaults to 'assembler')")
    insecure: bool = Field(default=False, description="plain HTTP (a local registry)")
    containerdisk: bool = Field(default=True, description="push the KubeVirt containerDisk image")
    artifacts: list[str] = Field(default_factory=lambda: ["qcow2"],
                                 description="disk formats to push as OCI artefacts (comma list; '' for none)")

    @field_validator("artifacts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        host = value.split("/", 1)[0]
        if not HOST.match(host) or "://" in value:
            raise ValueError("expected HOST[:PORT][/REPO], e.g. ghcr.io/me or 127.0.0.1:5000/test")
        return value.rstrip("/")

    @property
    def host(self) -> str:
        return self.registry.split("/", 1)[0]

    @property
    def prefix(self) -> str:
        parts = self.registry.split("/", 1)
        return parts[1] if len(parts) > 1 else "assembler"


# ---------------------------------------------------------------------------------------------- client


# ---------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    opener: Callable[[], IO[bytes]]
    label: str
    annotations: dict[str, str] | None = None

    def descriptor(self) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            desc["annotations"] = self.annotations
        return desc


@dataclass(frozen=True)
class OciImage:
    repo: str
    tag: str
    config: Blob
    layers: list[Blob]
    annotations: dict[str, str]
    artifact_type: str | None = None

    def manifest(self) -> bytes:
        body: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if self.artifact_type:
            body["artifactType"] = self.artifact_type
        body |= {"config": self.config.descriptor(), "layers": [b.descriptor() for b in self.layers],
                 "annotations": self.annotations}
        return canonical_json(body)

    @property
    def digest(self) -> str:
        return "sha256:" + sha256_bytes(self.manifest())


def _bytes_blob(data: bytes, media_type: str, label: str) -> Blob:
    import io

    return Blob("sha256:" + sha256_bytes(data), len(data), media_type, lambda: io.BytesIO(data), label)


def _member_opener(archive: Path, offset: int) -> Callable[[], IO[bytes]]:
    """Open the archive at a member's data (an uncompressed tar stores it contiguously)."""

    def opener() -> IO[bytes]:
        handle = archive.open("rb")
        handle.seek(offset)
        return handle

    return opener


def archive_image(archive: Path, repo: str, annotations: dict[str, str], *, tag: str | None = None,
                  what: str = "layer") -> OciImage:
    """A docker-archive's config and (uncompressed) layers as an OCI image; nothing is extracted to disk.

    The layers stay uncompressed, so each layer digest is its diff_id and the manifest digest is the same on
    every push of the same archive. The tag defaults to the first 12 hex of the image ID."""
    with tarfile.open(archive) as tar:
        index = json.loads(_read_member(tar, "manifest.json"))[0]
        config = _read_member(tar, index["Config"])
        members = [tar.getmember(name) for name in index["Layers"]]
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    if len(diff_ids) != len(members):
        raise ConfigError(f"{archive} lists {len(members)} layers but its config {len(diff_ids)}",
                          resolution="save the image again (`docker save`)")
    layers = [Blob(diff_id, member.size, OCI_LAYER_TAR, _member_opener(archive, member.offset_data),
                   what if len(members) == 1 else f"{what} {n + 1}/{len(members)}")
              for n, (diff_id, member) in enumerate(zip(diff_ids, members, strict=True))]
    config_blob = _bytes_blob(config, OCI_CONFIG, "config")
    return OciImage(repo, tag or config_blob.digest.removeprefix("sha256:")[:12], config_blob, layers, annotations)


def containerdisk_image(artifact: Artifact, repo: str, annotations: dict[str, str]) -> OciImage:
    """The KubeVirt containerDisk (a one-layer docker-archive) as an OCI image."""
    return archive_image(artifact.path, repo, annotations, what="containerDisk layer")


def push_image(registry: Registry, kind: str, img: OciImage, progress: Progress) -> PublishedItem:
    """Blobs the registry lacks, then the manifest; a tag that already names this manifest is left alone."""
    ref = f"{registry.host}/{img.repo}:{img.tag}"
    url = f"{registry.base}{img.repo}/manifests/{img.digest}"
    if registry.manifest_digest(img.repo, img.tag) == img.digest:
        return PublishedItem(kind=kind, id=f"{ref}@{img.digest}", url=url, digest=img.digest, reused=True)
    for blob in [*img.layers, img.config]:
        if registry.has_blob(img.repo, blob.digest):
            continue
        task = progress.task(f"{img.repo}: {blob.label}", blob.size)
        try:
            registry.push_blob(img.repo, blob.digest, blob.size, blob.opener, task)
        finally:
            task.close()
    digest = registry.put_manifest(img.repo, img.tag, img.manifest())
    if digest != img.digest:
        raise PublishError(f"registry {registry.host} stored {ref} as {digest}, expected {img.digest}",
                           resolution="the registry rewrote the manifest; use an OCI-compliant registry")
    return PublishedItem(kind=kind, id=f"{ref}@{digest}", url=url, digest=digest)


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise ConfigError(f"{tar.name!s} has no file {name}", resolution="rebuild the containerDisk")
    return member.read()


def disk_artifact(artifact: Artifact, repo: str, image: str, annotations: dict[str, str]) -> OciImage:
    config = canonical_json({"image": image, "format": artifact.format, "file": artifact.path.name,
                             "sha256": artifact.sha256, "size": artifact.size})
    path = artifact.path
    layer = Blob("sha256:" + artifact.sha256, artifact.size, DISK_LAYER.format(fmt=artifact.format),
                 lambda: path.open("rb"), path.name, annotations={TITLE: path.name})
    return OciImage(repo, f"{artifact.format}-{artifact.short}", _bytes_blob(config, DISK_CONFIG, "config"),
                    [layer], annotations, artifact_type=DISK_ARTIFACT)


# -------------------------------------------------------------------------------------------- provider


class OciProvider(BaseProvider):
    name = "oci"
    formats = ("kubevirt", "qcow2", "raw", "vmdk", "vhd", "gce", "ova")
    options_model: ClassVar[type[Options]] = OciOptions

    @property
    def opts(self) -> OciOptions:
        assert isinstance(self.options, OciOptions)
        return self.options

    def images(self, ctx: PublishContext) -> tuple[list[Artifact], list[tuple[str, OciImage]]]:
        outputs, opts = ctx.outputs, self.opts
        name = outputs.image.lower()
        base = {"org.opencontainers.image.title": outputs.image,
                **{f"dev.assembler.{k}": v for k, v in outputs.labels(Artifact("", Path(), "")).items()
                   if k in ("assembler-version", "oci-digest", "rootfs-sha256")}}
        sources: list[Artifact] = []
        images: list[tuple[str, OciImage]] = []
        if opts.containerdisk:
            art = outputs.artifact("kubevirt")
            sources.append(art)
            images.append(("containerdisk", containerdisk_image(art, f"{opts.prefix}/{name}-containerdisk", base)))
        for fmt in opts.artifacts:
            art = outputs.artifact(fmt)
            sources.append(art)
            annotations = base | {"dev.assembler.format": fmt, "dev.assembler.disk-sha256": art.sha256}
            images.append(("artifact", disk_artifact(art, f"{opts.prefix}/{name}-disk", outputs.image,
                                                     annotations)))
        return sources, images

    def plan(self, ctx: PublishContext) -> list[str]:
        _, images = self.images(ctx)
        scheme = "http" if self.opts.insecure else "https"
        return [f"push {kind} {self.opts.host}/{img.repo}:{img.tag} ({scheme}, manifest {img.digest})"
                for kind, img in images]

    def publish(self, ctx: PublishContext) -> Receipt:
        sources, images = self.images(ctx)
        registry = Registry(self.opts.host, insecure=self.opts.insecure)
        registry.ping()
        items = [self._push(registry, kind, img, ctx) for kind, img in images]
        return self.receipt(ctx, sources, items)

    def _push(self, registry: Registry, kind: str, img: OciImage, ctx: PublishContext) -> PublishedItem:
        return push_image(registry, kind, img, ctx.progress)

