"""OpenStack: a Glance image from the qcow2 (or raw) disk, with disk/container format and properties.

Idempotent: the image is named IMAGE-<12 hex of the disk's sha256> and carries `assembler_disk_sha256`;
an active image with that name and property is reused. Glance's image upload is one PUT (no resume; a
failed upload leaves a `queued` image that the next run deletes and replaces). Credentials: openstacksdk's
chain (clouds.yaml + OS_CLOUD or --cloud, or the OS_* environment variables).
Not run against a server here: the tests check the calls with a fake connection (docs/publish.md).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from assembler.errors import AssemblerError
from assembler.providers.base import (
    Artifact,
    BaseProvider,
    Options,
    PublishContext,
    PublishedItem,
    PublishError,
    Receipt,
    scrub,
    secret_values,
)


class OpenStackOptions(Options):
    cloud: str | None = Field(default=None, description="clouds.yaml entry (default: OS_CLOUD or the OS_* variables)")
    disk_format: Literal["qcow2", "raw"] = Field(default="qcow2", description="Glance disk format")
    visibility: Literal["private", "shared", "community", "public"] = Field(default="private",
                                                                            description="Glance visibility")
    os_distro: str | None = Field(default=None, description="Glance os_distro property (e.g. debian)")
    os_version: str | None = Field(default=None, description="Glance os_version property (e.g. 12)")


# Debian's architecture names (the build's) to Nova's (libvirt's) and the machine type each boots on.
NOVA_ARCHITECTURES = {"amd64": ("x86_64", "q35"), "arm64": ("aarch64", "virt")}


def glance_properties(labels: dict[str, str], firmware: tuple[str, ...], opts: OpenStackOptions,
                      architecture: str = "amd64") -> dict[str, str]:
    props = {f"assembler_{k.replace('-', '_')}": v for k, v in labels.items()}
    nova_arch, machine = NOVA_ARCHITECTURES[architecture]
    props |= {"hw_machine_type": machine, "hw_disk_bus": "virtio", "hw_vif_model": "virtio",
              "architecture": nova_arch}
    if firmware == ("uefi",):
        props["hw_firmware_type"] = "uefi"
    if opts.os_distro:
        props["os_distro"] = opts.os_distro
    if opts.os_version:
        props["os_version"] = opts.os_version
    return props


class OpenStackProvider(BaseProvider):
    name = "openstack"
    formats = ("qcow2", "raw")
    options_model: ClassVar[type[Options]] = OpenStackOptions

    @property
    def opts(self) -> OpenStackOptions:
        assert isinstance(self.options, OpenStackOptions)
        return self.options

    def plan(self, ctx: PublishContext) -> list[str]:
        art = ctx.outputs.artifact(self.opts.disk_format)
        return [f"glance: create image {ctx.outputs.image}-{art.short} from {art.path.name} "
                f"(disk_format={self.opts.disk_format}, container_format=bare, {self.opts.visibility}, "
                f"architecture={NOVA_ARCHITECTURES[ctx.outputs.architecture][0]})"]

    def connect(self) -> Any:
        import openstack  # lazily

        return openstack.connect(cloud=self.opts.cloud) if self.opts.cloud else openstack.connect()

    def publish(self, ctx: PublishContext) -> Receipt:
        art = ctx.outputs.artifact(self.opts.disk_format)
        try:
            return self.receipt(ctx, [art], [self.upload(self.connect(), ctx, art)])
        except AssemblerError:
            raise
        except Exception as exc:  # openstack.exceptions.SDKException and keystoneauth errors
            raise PublishError(f"OpenStack call failed: {type(exc).__name__}",
                               details=scrub(str(exc), secret_values()),
                               resolution="check clouds.yaml / OS_CLOUD / OS_* variables and the Glance quota; "
                                          "re-run to retry") from exc

    def upload(self, conn: Any, ctx: PublishContext, art: Artifact) -> PublishedItem:
        name = f"{ctx.outputs.image}-{art.short}"
        sha_key = "assembler_disk_sha256"
        for image in conn.image.images(name=name):
            props = getattr(image, "properties", None) or {}
            if image.status == "active" and props.get(sha_key) == art.sha256:
                return PublishedItem(kind="image", id=image.id, digest=art.sha256, reused=True)
            conn.image.delete_image(image, ignore_missing=True)  # a queued/failed leftover of an earlier run
        task = ctx.progress.task(f"glance {name}", art.size)
        try:
            image = conn.image.create_image(
                name=name, filename=str(art.path), disk_format=self.opts.disk_format, container_format="bare",
                visibility=self.opts.visibility, wait=True, timeout=3600, validate_checksum=True,
                **glance_properties(ctx.outputs.labels(art), ctx.outputs.firmware, self.opts,
                                    ctx.outputs.architecture))
            task.advance(art.size)
        finally:
            task.close()
        return PublishedItem(kind="image", id=image.id, digest=art.sha256)
