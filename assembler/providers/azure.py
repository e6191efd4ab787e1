"""Azure: the fixed, MiB-aligned VHD as a page blob, then a managed image and/or a gallery image version.

The upload writes 4 MiB pages (512-byte aligned) from a few threads and skips all-zero pages (a new page
blob reads as zeros). The blob's metadata says `state=uploading` until the last page is in, then
`state=complete` with the VHD's sha256: a re-run finds a complete blob and uploads nothing, or resumes an
interrupted one by skipping the pages the service already lists (`get_page_ranges`).
Blob name: IMAGE-<12 hex of the VHD's sha256>.vhd. Credentials: AZURE_STORAGE_CONNECTION_STRING, else
--account-url with azure-identity's DefaultAzureCredential (env, managed identity, az login); the management
calls use DefaultAzureCredential and AZURE_SUBSCRIPTION_ID.
Trusted Launch (Secure Boot + vTPM) is a property of the gallery image definition (its SecurityType feature),
which publish does not create: for a Secure Boot image it checks the definition and warns when it lacks it.
A managed image cannot be Trusted Launch at all (Azure allows it only from a gallery).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, Literal

from pydantic import Field

from assembler.errors import AssemblerError, ConfigError
from assembler.log import log
from assembler.providers.base import (
    Artifact,
    BaseProvider,
    Options,
    PublishContext,
    PublishedItem,
    PublishError,
    Receipt,
    chunks,
    scrub,
    secret_values,
)

PAGE = 512
MAX_PUT = 4 << 20  # the service's limit for one Put Page
# SecurityType values of a gallery image definition under which a VM can start with Trusted Launch.
TRUSTED_LAUNCH = ("TrustedLaunch", "TrustedLaunchSupported", "TrustedLaunchAndConfidentialVmSupported")


class AzureOptions(Options):
    container: str = Field(default="assembler", description="blob container (created if missing)")
    account_url: str | None = Field(default=None, description="https://ACCOUNT.blob.core.windows.net")
    resource_group: str | None = Field(default=None, description="create images in this resource group")
    location: str | None = Field(default=None, description="Azure region of the image")
    gallery: str | None = Field(default=None, description="Compute Gallery name")
    gallery_image: str | None = Field(default=None, description="gallery image definition")
    gallery_version: str | None = Field(default=None, pattern=r"^\d+\.\d+\.\d+$",
                                        description="gallery image version MAJOR.MINOR.PATCH")
    storage_account_id: str | None = Field(default=None, description="resource ID of the storage account")
    hyper_v_generation: Literal["V1", "V2"] | None = Field(
        default=None, description="HyperV generation (default: V2 when the image boots UEFI, else V1)")
    workers: int = Field(default=4, ge=1, le=32, description="Put Page calls in flight (1 to 32)")
    retries: int = Field(default=5, ge=0, description="retries of each storage call (SDK backoff)")


def generation(firmware: tuple[str, ...], override: str | None) -> str:
    return override or ("V2" if "uefi" in firmware else "V1")


def image_request(opts: AzureOptions, blob_url: str, firmware: tuple[str, ...],
                  tags: dict[str, str]) -> dict[str, Any]:
    """The body of Images.CreateOrUpdate for a generalized Linux image from the page blob."""
    return {
        "location": opts.location, "tags": tags,
        "hyper_v_generation": generation(firmware, opts.hyper_v_generation),
        "storage_profile": {"os_disk": {"os_type": "Linux", "os_state": "Generalized", "blob_uri": blob_url,
                                        "caching": "ReadWrite"}},
    }


def gallery_version_request(opts: AzureOptions, blob_url: str, tags: dict[str, str]) -> dict[str, Any]:
    """The body of GalleryImageVersions.CreateOrUpdate from the VHD (the definition must exist)."""
    return {
        "location": opts.location, "tags": tags,
        "publishing_profile": {"target_regions": [{"name": opts.location, "regional_replica_count": 1}]},
        "storage_profile": {"os_disk_image": {"source": {"storage_account_id": opts.storage_account_id,
                                                         "uri": blob_url}, "host_caching": "ReadWrite"}},
    }


def security_type(definition: Any) -> str | None:
    """The SecurityType feature of a gallery image definition (GalleryImage), None when it has none."""
    for feature in getattr(definition, "features", None) or ():
        if str(feature.name).lower() == "securitytype":
            return str(feature.value)
    return None


# Debian's architecture names (the build's) to a gallery image definition's (None there means x64).
AZURE_ARCHITECTURES = {"amd64": "x64", "arm64": "Arm64"}


def definition_architecture(definition: Any) -> str:
    return str(getattr(definition, "architecture", None) or "x64")


def azure_tags(labels: dict[str, str]) -> dict[str, str]:
    return {f"assembler-{k}" if not k.startswith("assembler") else k: v[:256] for k, v in labels.items()}


class AzureProvider(BaseProvider):
    name = "azure"
    formats = ("vhd",)
    options_model: ClassVar[type[Options]] = AzureOptions

    @property
    def opts(self) -> AzureOptions:
        assert isinstance(self.options, AzureOptions)
        return self.options

    def blob_name(self, ctx: PublishContext, art: Artifact) -> str:
        return f"{ctx.outputs.image}-{art.short}.vhd"

    def plan(self, ctx: PublishContext) -> list[str]:
        art, opts = ctx.outputs.artifact("vhd"), self.opts
        steps = [f"upload {art.path.name} as page blob {opts.container}/{self.blob_name(ctx, art)} "
                 f"(4 MiB pages, zero pages skipped, {opts.workers} threads)"]
        secure = ctx.outputs.secure_boot
        if opts.resource_group and ctx.outputs.architecture == "amd64":
            steps.append(f"create image {self.blob_name(ctx, art)[:-4]} in {opts.resource_group} ({opts.location})"
                         + (" (a managed image: no Trusted Launch, Azure allows that only from a gallery)"
                            if secure else ""))
        if opts.gallery:
            steps.append(f"check that gallery image definition {opts.gallery}/{opts.gallery_image} has "
                         f"architecture {AZURE_ARCHITECTURES[ctx.outputs.architecture]}")
            if secure:
                steps.append(f"check that gallery image definition {opts.gallery}/{opts.gallery_image} has "
                             "SecurityType TrustedLaunch (Secure Boot image)")
            steps.append(f"create gallery image version {opts.gallery}/{opts.gallery_image}/{opts.gallery_version}")
        return steps

    def validate(self, art: Artifact, architecture: str = "amd64") -> None:
        opts = self.opts
        if architecture != "amd64" and opts.resource_group and not opts.gallery:
            # A managed image has no architecture: Azure starts Arm64 VMs only from a gallery image definition.
            raise ConfigError(f"an {architecture} image is published to Azure through a Compute Gallery only",
                              resolution="pass --gallery, --gallery-image (a definition created with "
                                         "`--architecture Arm64`) and --gallery-version")
        if art.size % PAGE or (art.size - PAGE) % (1 << 20):
            raise ConfigError(f"{art.path.name} is not a fixed VHD with a whole number of MiB",
                              resolution="rebuild the vhd output (assembler's vhd format is fixed and aligned)")
        if (opts.resource_group or opts.gallery) and not opts.location:
            raise ConfigError("creating an Azure image needs --location", resolution="pass --location REGION")
        if opts.gallery and not (opts.gallery_image and opts.gallery_version and opts.resource_group):
            raise ConfigError("a gallery image version needs --resource-group, --gallery-image and a version",
                              resolution="pass them, e.g. --gallery-version 1.0.0")

    def publish(self, ctx: PublishContext) -> Receipt:
        art = ctx.outputs.artifact("vhd")
        self.validate(art, ctx.outputs.architecture)
        try:
            return self._publish(ctx, art)
        except AssemblerError:
            raise
        except Exception as exc:  # azure.core's ServiceRequestError, HttpResponseError, ClientAuthenticationError
            raise PublishError(f"Azure call failed: {type(exc).__name__}", details=scrub(str(exc), secret_values()),
                               resolution="check the storage account/credentials and that the service answers; "
                                          "re-running resumes the upload") from exc

    def _publish(self, ctx: PublishContext, art: Artifact) -> Receipt:
        container = self.blob_service().get_container_client(self.opts.container)
        item = upload_page_blob(container, self.blob_name(ctx, art), art, ctx, self.opts.workers)
        items = [item]
        tags = azure_tags(ctx.outputs.labels(art))
        if self.opts.resource_group:
            items += self.create_images(ctx, art, item.url, tags)
        return self.receipt(ctx, [art], items)

    def blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient  # lazily: only this provider needs it

        if conn := os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
            return BlobServiceClient.from_connection_string(conn, retry_total=self.opts.retries)
        if not self.opts.account_url:
            raise ConfigError("no Azure storage account given",
                              resolution="set AZURE_STORAGE_CONNECTION_STRING or pass --account-url "
                                         "(credentials from azure-identity's default chain)")
        from azure.identity import DefaultAzureCredential

        return BlobServiceClient(self.opts.account_url, credential=DefaultAzureCredential(),
                                 retry_total=self.opts.retries)

    def compute_client(self) -> Any:
        from azure.identity import DefaultAzureCredential
        from azure.mgmt.compute import ComputeManagementClient

        subscription = os.environ.get("AZURE_SUBSCRIPTION_ID")
        if not subscription:
            raise ConfigError("AZURE_SUBSCRIPTION_ID is not set", resolution="export AZURE_SUBSCRIPTION_ID=...")
        return ComputeManagementClient(DefaultAzureCredential(), subscription)

    def create_images(self, ctx: PublishContext, art: Artifact, blob_url: str,
                      tags: dict[str, str]) -> list[PublishedItem]:
        opts, compute = self.opts, self.compute_client()
        group = str(opts.resource_group)
        name = self.blob_name(ctx, art)[:-4]
        items = []
        arm = ctx.outputs.architecture != "amd64"
        existing = None if arm else _get_or_none(compute.images.get, group, name)
        if existing is not None:
            items.append(PublishedItem(kind="image", id=existing.id, digest=art.sha256, reused=True))
        elif not arm:  # validate() sent arm64 to a gallery: a managed image cannot be Arm64
            body = image_request(opts, blob_url, ctx.outputs.firmware, tags)
            image = compute.images.begin_create_or_update(group, name, body).result()
            items.append(PublishedItem(kind="image", id=image.id, digest=art.sha256))
        if opts.gallery:
            definition = _get_or_none(compute.gallery_images.get, group, opts.gallery, opts.gallery_image)
            if definition is not None:  # a missing one: creating the version fails with Azure's own message
                self.check_architecture(definition, ctx.outputs.architecture)
                if ctx.outputs.secure_boot:
                    self.check_trusted_launch(definition, ctx.outputs.image)
            args = (group, opts.gallery, opts.gallery_image, opts.gallery_version)
            version = _get_or_none(compute.gallery_image_versions.get, *args)
            if version is not None:
                items.append(PublishedItem(kind="gallery-image-version", id=version.id, digest=art.sha256,
                                           reused=True))
            else:
                body = gallery_version_request(opts, blob_url, tags)
                version = compute.gallery_image_versions.begin_create_or_update(*args, body).result()
                items.append(PublishedItem(kind="gallery-image-version", id=version.id, digest=art.sha256))
        return items

    def check_architecture(self, definition: Any, architecture: str) -> None:
        """An error, before the version is made: a version of another architecture than its definition's
        never starts (Azure takes the VM size's architecture from the definition)."""
        opts = self.opts
        wanted, found = AZURE_ARCHITECTURES[architecture], definition_architecture(definition)
        if found.lower() != wanted.lower():
            raise ConfigError(f"gallery image definition {opts.gallery}/{opts.gallery_image} is {found}, the disk "
                              f"boots {architecture} ({wanted})",
                              resolution=f"publish to a definition created with `--architecture {wanted}`, or "
                                         "publish the build of the definition's architecture")

    def check_trusted_launch(self, definition: Any, image: str) -> None:
        """A warning, not an error: a version in a Standard definition still boots, just without Secure Boot
        and vTPM, and the definition is the user's to change."""
        opts = self.opts
        found = security_type(definition)
        if (found or "").lower() not in {value.lower() for value in TRUSTED_LAUNCH}:
            log.warning("%s is signed for Secure Boot, but gallery image definition %s/%s has SecurityType %s: "
                        "its VMs start without Secure Boot and vTPM; a definition with "
                        "`--features SecurityType=TrustedLaunch` (az sig image-definition create) gives them",
                        image, opts.gallery, opts.gallery_image, found or "Standard")


def _get_or_none(getter: Any, *args: Any) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return getter(*args)
    except ResourceNotFoundError:
        return None


# --------------------------------------------------------------------------------------------- page blob


def _written(ranges: list[tuple[int, int]], offset: int, length: int) -> bool:
    return any(start <= offset and offset + length - 1 <= end for start, end in ranges)


def _existing_ranges(blob: Any, art: Artifact) -> list[tuple[int, int]] | None:
    """None when the blob must be (re)created; else the page ranges already written by an earlier run."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        props = blob.get_blob_properties()
    except ResourceNotFoundError:
        return None
    meta = props.metadata or {}
    if meta.get("sha256") != art.sha256 or props.size != art.size:
        return None
    if meta.get("state") == "complete":
        return []
    return [(int(r.start), int(r.end)) for r in blob.list_page_ranges() if not r.cleared]


def upload_page_blob(container: Any, name: str, art: Artifact, ctx: PublishContext, workers: int) -> PublishedItem:
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    blob = container.get_blob_client(name)
    ranges = _existing_ranges(blob, art)
    if ranges == [] and (blob.get_blob_properties().metadata or {}).get("state") == "complete":
        return PublishedItem(kind="blob", id=f"{container.container_name}/{name}", url=blob.url,
                             digest=art.sha256, reused=True)
    if ranges is None:
        blob.create_page_blob(art.size, metadata={"sha256": art.sha256, "state": "uploading"})
        ranges = []
    task = ctx.progress.task(f"page blob {name}", art.size)
    try:
        _put_pages(blob, art, ranges, task, workers)
    finally:
        task.close()
    blob.set_blob_metadata({"sha256": art.sha256, "state": "complete"})
    return PublishedItem(kind="blob", id=f"{container.container_name}/{name}", url=blob.url, digest=art.sha256)


def _pages_to_send(art: Artifact, ranges: list[tuple[int, int]], task: Any) -> Iterator[tuple[int, bytes]]:
    zero = bytes(MAX_PUT)
    for offset, data in chunks(art.path, MAX_PUT):
        if data == zero[: len(data)] or _written(ranges, offset, len(data)):
            task.advance(len(data))
            continue
        yield offset, data


def _put_pages(blob: Any, art: Artifact, ranges: list[tuple[int, int]], task: Any, workers: int) -> None:
    """Up to `workers` Put Page calls in flight; at most 2 x workers pages held in memory."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Future[Any]] = []
        for offset, data in _pages_to_send(art, ranges, task):
            pending.append(pool.submit(_put, blob, offset, data, task))
            if len(pending) >= 2 * workers:
                pending.pop(0).result()
        for future in pending:
            future.result()


def _put(blob: Any, offset: int, data: bytes, task: Any) -> None:
    blob.upload_page(data, offset=offset, length=len(data))
    task.advance(len(data))
