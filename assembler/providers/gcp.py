"""GCP: the gce tar.gz (disk.raw in an oldgnu tar) to a GCS bucket, then `images.insert` from it.

Idempotent: the object is gs://BUCKET/PREFIX/IMAGE-<12 hex>.tar.gz (skipped when it exists with our sha256 in
its metadata) and the image is named IMAGE-<12 hex> (skipped when `images.get` finds it). The GCS upload is
a resumable upload session (google-cloud-storage retries chunks within one run; a new run starts a new
session). Credentials and project: Application Default Credentials and GOOGLE_CLOUD_PROJECT (or --project).
Not run against a server here: the tests check the exact requests with fakes (docs/publish.md).
"""

from __future__ import annotations

import os
import re
import time
from typing import IO, Any, ClassVar

from pydantic import Field

from assembler.errors import AssemblerError, ConfigError
from assembler.log import log
from assembler.providers.base import (
    Artifact,
    BaseProvider,
    Options,
    ProgressReader,
    ProgressTask,
    PublishContext,
    PublishedItem,
    PublishError,
    Receipt,
    scrub,
    secret_values,
)

CHUNK = 32 << 20  # resumable upload chunk (a multiple of 256 KiB)


class SeekableReader(ProgressReader):
    """google-resumable-media rewinds to the last committed chunk on retry: it needs tell() and seek()."""

    def __init__(self, handle: IO[bytes], size: int, task: ProgressTask) -> None:
        super().__init__(handle, size, task)
        self._seekable = handle

    def tell(self) -> int:
        return self._seekable.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._seekable.seek(offset, whence)
        self._left = self._size - position
        return position


class GcpOptions(Options):
    bucket: str = Field(description="GCS bucket for the tar.gz")
    project: str | None = Field(default=None,
                                description="GCP project (default: GOOGLE_CLOUD_PROJECT or the ADC project)")
    prefix: str = Field(default="assembler", description="GCS object prefix")
    family: str | None = Field(default=None, description="GCE image family")


def gce_name(value: str) -> str:
    """GCE resource names: [a-z]([-a-z0-9]*[a-z0-9])?, at most 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")
    name = name if name[:1].isalpha() else f"img-{name}"
    return name[:63].rstrip("-")


def label_value(value: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "_", value.lower())[:63]


def guest_os_features(firmware: tuple[str, ...], secure_boot: bool = False) -> list[str]:
    """UEFI_COMPATIBLE is all Shielded VM (vTPM, integrity monitoring) asks of an image: the API has no TPM
    feature. SECURE_BOOT marks the image's boot chain as signed; an instance still turns Secure Boot on
    itself (shieldedInstanceConfig.enableSecureBoot, off by default)."""
    if "uefi" not in firmware:
        return []
    return ["UEFI_COMPATIBLE", "SECURE_BOOT"] if secure_boot else ["UEFI_COMPATIBLE"]


# Debian's architecture names (the build's) to the Compute API's Image.architecture.
GCE_ARCHITECTURES = {"amd64": "X86_64", "arm64": "ARM64"}


def image_body(name: str, source_uri: str, firmware: tuple[str, ...], labels: dict[str, str],
               family: str | None, *, secure_boot: bool = False, architecture: str = "amd64") -> dict[str, Any]:
    """The images.insert body (field names as the Compute API and google-cloud-compute's Image take them)."""
    features = [{"type_": feature} for feature in guest_os_features(firmware, secure_boot)]
    body: dict[str, Any] = {
        "name": name, "raw_disk": {"source": source_uri}, "guest_os_features": features,
        # An image without it can only start x86 machine types: arm64 (Tau T2A, Axion) needs ARM64.
        "architecture": GCE_ARCHITECTURES[architecture],
        "labels": {k.replace(":", "-"): label_value(v) for k, v in labels.items()},
        # label values stop at 63 characters: the full digest goes in the description
        "description": f"assembler image {name}; disk sha256 {labels.get('disk-sha256', '')}",
    }
    if family:
        body["family"] = family
    return body


class GcpProvider(BaseProvider):
    name = "gcp"
    formats = ("gce",)
    options_model: ClassVar[type[Options]] = GcpOptions

    @property
    def opts(self) -> GcpOptions:
        assert isinstance(self.options, GcpOptions)
        return self.options

    def names(self, ctx: PublishContext, art: Artifact) -> tuple[str, str]:
        image = gce_name(f"{ctx.outputs.image}-{art.short}")
        return image, f"{self.opts.prefix}/{image}.tar.gz"

    def project(self) -> str:
        project = self.opts.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
        if not project:
            raise ConfigError("no GCP project", resolution="pass --project or set GOOGLE_CLOUD_PROJECT")
        return project

    def plan(self, ctx: PublishContext) -> list[str]:
        art = ctx.outputs.artifact("gce")
        image, obj = self.names(ctx, art)
        features = guest_os_features(ctx.outputs.firmware, ctx.outputs.secure_boot)
        insert = (f"images.insert {image} ({GCE_ARCHITECTURES[ctx.outputs.architecture]}) in project "
                  f"{self.opts.project or '$GOOGLE_CLOUD_PROJECT'}")
        if features:
            insert += f", guestOsFeatures {', '.join(features)}"
        return [f"upload {art.path.name} to gs://{self.opts.bucket}/{obj} (resumable)", insert]

    def publish(self, ctx: PublishContext) -> Receipt:
        art = ctx.outputs.artifact("gce")
        try:
            return self._publish(ctx, art)
        except AssemblerError:
            raise
        except Exception as exc:  # google.api_core exceptions, auth errors, transport errors
            raise PublishError(f"GCP call failed: {type(exc).__name__}", details=scrub(str(exc), secret_values()),
                               resolution="check Application Default Credentials, the project and the bucket; "
                                          "re-run to continue") from exc

    def _publish(self, ctx: PublishContext, art: Artifact) -> Receipt:
        project = self.project()
        image_name, obj = self.names(ctx, art)
        items = [self.upload(self.storage_client(project), obj, art, ctx)]
        images = self.images_client()
        existing = self.ready_image(images, project, image_name)
        url = f"https://console.cloud.google.com/compute/imagesDetail/projects/{project}/global/images/{image_name}"
        if existing is not None:
            items.append(PublishedItem(kind="image", id=image_name, url=url, digest=art.sha256, reused=True))
        else:
            body = image_body(image_name, f"https://storage.googleapis.com/{self.opts.bucket}/{obj}",
                              ctx.outputs.firmware, ctx.outputs.labels(art), self.opts.family,
                              secure_boot=ctx.outputs.secure_boot, architecture=ctx.outputs.architecture)
            self.insert_image(images, project, body)
            items.append(PublishedItem(kind="image", id=image_name, url=url, digest=art.sha256))
        return self.receipt(ctx, [art], items)

    def storage_client(self, project: str) -> Any:
        from google.cloud import storage  # type: ignore[attr-defined]  # lazily

        return storage.Client(project=project)

    def images_client(self) -> Any:
        from google.cloud import compute_v1  # lazily

        return compute_v1.ImagesClient()

    def upload(self, client: Any, obj: str, art: Artifact, ctx: PublishContext) -> PublishedItem:
        bucket = client.bucket(self.opts.bucket)
        blob = bucket.blob(obj, chunk_size=CHUNK)
        url = f"gs://{self.opts.bucket}/{obj}"
        if blob.exists():
            blob.reload()
            if (blob.metadata or {}).get("sha256") == art.sha256:
                return PublishedItem(kind="gcs-object", id=url, digest=art.sha256, reused=True)
        blob.metadata = {"sha256": art.sha256}
        task = ctx.progress.task(url, art.size)
        try:
            with art.path.open("rb") as handle:
                blob.upload_from_file(SeekableReader(handle, art.size, task), size=art.size,
                                      content_type="application/gzip")
        finally:
            task.close()
        return PublishedItem(kind="gcs-object", id=url, digest=art.sha256)

    def ready_image(self, images: Any, project: str, name: str, *, poll: float = 10,
                    timeout: float = 3600) -> Any:
        """The image of this name once READY; None when there is none, or it failed (it is deleted first)."""
        deadline = time.monotonic() + timeout
        while True:
            image = self.get_image(images, project, name)
            status = getattr(image, "status", "READY") if image is not None else None
            if status is None or status == "READY":
                return image
            if status == "FAILED":
                log.warning("GCE image %s failed earlier: deleting it and creating it again", name)
                images.delete(project=project, image=name).result(timeout=600)
                return None
            if time.monotonic() > deadline:  # PENDING or DELETING for too long
                raise PublishError(f"GCE image {name} stayed {status} for {timeout:.0f} s",
                                   resolution="look at the image in the console; re-run once it settled")
            time.sleep(poll)

    def get_image(self, images: Any, project: str, name: str) -> Any:
        from google.api_core.exceptions import NotFound

        try:
            return images.get(project=project, image=name)
        except NotFound:
            return None

    def insert_image(self, images: Any, project: str, body: dict[str, Any]) -> None:
        from google.cloud import compute_v1

        operation = images.insert(project=project, image_resource=compute_v1.Image(**body))
        operation.result(timeout=3600)
