"""AWS: an EBS snapshot from the disk, then an AMI (ENA, boot mode from the manifest's firmware list; a Secure
Boot image is registered `uefi` with NitroTPM, `TpmSupport=v2.0`).

Two routes to the snapshot (`--method`):
- `import` (default): the streamOptimized VMDK to S3 (multipart, resumable: a re-run continues the pending
  multipart upload, skipping parts whose MD5 matches), `ImportSnapshot` (needs the `vmimport` service role,
  see docs/publish.md), poll `DescribeImportSnapshotTasks` until completed.
- `ebs-direct`: the raw disk straight into a snapshot with the EBS direct APIs (`StartSnapshot`,
  `PutSnapshotBlock` for each non-zero 512 KiB block with its SHA-256, `CompleteSnapshot`), no S3, no role.
Then `RegisterImage` and `CreateTags` (image and snapshot) with versions and digests.
Idempotent: the AMI is named IMAGE-<12 hex of the disk's sha256>; an AMI of that name is reused, and so is
a snapshot tagged with the disk's sha256. Credentials and endpoint come from boto3's own chain
(AWS_PROFILE, AWS_ACCESS_KEY_ID..., AWS_ENDPOINT_URL, instance roles).
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
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

EBS_BLOCK = 512 * 1024
MIN_PART = 8 << 20
MAX_PARTS = 10_000
GIB = 1 << 30
TAG_PREFIX = "assembler:"
IMPORT_FORMATS = {"vmdk": "VMDK", "raw": "RAW", "vhd": "VHD"}


class AwsOptions(Options):
    bucket: str | None = Field(default=None, description="S3 bucket for the import method")
    region: str | None = Field(default=None, description="AWS region (default: the SDK's chain)")
    method: Literal["import", "ebs-direct"] = Field(
        default="import", description="import (S3 + ImportSnapshot) or ebs-direct (EBS direct APIs: no S3, no role)")
    prefix: str = Field(default="assembler/", description="S3 key prefix")
    role_name: str = Field(default="vmimport", description="VM Import service role")
    architecture: Literal["x86_64", "arm64"] | None = Field(
        default=None, description="the AMI's architecture (default: the disk's; another one is refused)")
    volume_type: str = Field(default="gp3", description="EBS volume type of the AMI's root device")
    wait_timeout: int = Field(default=7200, description="seconds to wait for the snapshot (either method)")
    poll_interval: float = Field(default=15.0, description="seconds between polls of a pending snapshot")


# Debian's architecture names (the build's) to EC2's.
EC2_ARCHITECTURES = {"amd64": "x86_64", "arm64": "arm64"}


def ami_architecture(disk: str, option: str | None) -> str:
    """The disk's architecture in EC2's words; an option naming another is refused (the AMI would not boot)."""
    wanted = EC2_ARCHITECTURES[disk]
    if option is not None and option != wanted:
        raise ConfigError(f"--architecture {option}, but the disk boots {disk} ({wanted} in EC2)",
                          resolution="drop the option (the AMI takes the disk's architecture), or publish the "
                                     "build of the other architecture (`assembler build IMAGE --arch ...`)")
    return wanted


def boot_mode(firmware: tuple[str, ...]) -> str:
    if "uefi" in firmware and "bios" in firmware:
        return "uefi-preferred"
    return "uefi" if "uefi" in firmware else "legacy-bios"


def aws_tags(labels: dict[str, str], name: str) -> list[dict[str, str]]:
    return [{"Key": "Name", "Value": name}] + [{"Key": TAG_PREFIX + k, "Value": v[:256]} for k, v in labels.items()]


class AwsProvider(BaseProvider):
    name = "aws"
    formats = ("vmdk", "raw", "vhd")
    options_model: ClassVar[type[Options]] = AwsOptions

    @property
    def opts(self) -> AwsOptions:
        assert isinstance(self.options, AwsOptions)
        return self.options

    def source(self, ctx: PublishContext) -> Artifact:
        return ctx.outputs.artifact("raw" if self.opts.method == "ebs-direct" else "vmdk")

    def ami_name(self, ctx: PublishContext, art: Artifact) -> str:
        return f"{ctx.outputs.image}-{art.short}"

    def plan(self, ctx: PublishContext) -> list[str]:
        art, opts = self.source(ctx), self.opts
        architecture = ami_architecture(ctx.outputs.architecture, opts.architecture)
        steps = [f"look for AMI {self.ami_name(ctx, art)} (owner self)"]
        if opts.method == "import":
            steps += [f"upload {art.path.name} to s3://{opts.bucket}/{self.s3_key(ctx, art)} (multipart)",
                      f"ImportSnapshot {IMPORT_FORMATS[art.format]} with role {opts.role_name}; wait"]
        else:
            steps.append(f"StartSnapshot + PutSnapshotBlock (non-zero 512 KiB blocks of {art.path.name})")
        if ctx.outputs.secure_boot:
            steps.append(f"RegisterImage {architecture}, ENA, BootMode uefi, TpmSupport v2.0 (Secure Boot image); "
                         "tag image and snapshot")
        else:
            steps.append(f"RegisterImage {architecture}, ENA, BootMode {boot_mode(ctx.outputs.firmware)}; "
                         "tag image and snapshot")
        return steps

    def s3_key(self, ctx: PublishContext, art: Artifact) -> str:
        return f"{self.opts.prefix}{ctx.outputs.image}/{art.sha256}/{art.path.name}"

    def publish(self, ctx: PublishContext) -> Receipt:
        if self.opts.method == "import" and not self.opts.bucket:
            raise ConfigError("the aws import method needs --bucket",
                              resolution="pass --bucket, or --method ebs-direct")
        ami_architecture(ctx.outputs.architecture, self.opts.architecture)  # before anything is uploaded
        try:
            return self._publish(ctx)
        except AssemblerError:
            raise
        except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError, ...
            raise PublishError(f"AWS call failed: {type(exc).__name__}", details=scrub(str(exc), secret_values()),
                               resolution="check credentials (AWS_PROFILE / AWS_ACCESS_KEY_ID), region and "
                                          "permissions; re-running resumes where it stopped") from exc

    def usable(self, ec2: Any, ami: dict[str, Any]) -> dict[str, Any] | None:
        """The AMI of this name if it is (or becomes) available; a failed one is deregistered (None)."""
        state = ami.get("State")
        if state == "pending":
            log.info("AMI %s is pending; waiting until it is available", ami["ImageId"])
            ec2.get_waiter("image_available").wait(ImageIds=[ami["ImageId"]],
                                                   WaiterConfig={"Delay": 15, "MaxAttempts": 240})
            return dict(ec2.describe_images(ImageIds=[ami["ImageId"]])["Images"][0])
        if state != "available":
            log.warning("AMI %s named %s is %s: deregistering it and registering the image again",
                        ami["ImageId"], ami.get("Name"), state)
            ec2.deregister_image(ImageId=ami["ImageId"])
            return None
        return ami

    def _publish(self, ctx: PublishContext) -> Receipt:
        import boto3  # lazily: only this provider needs it

        session = boto3.session.Session(region_name=self.opts.region)
        ec2 = session.client("ec2")
        art = self.source(ctx)
        name = self.ami_name(ctx, art)
        tags = aws_tags(ctx.outputs.labels(art), name)
        found = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
        ami = self.usable(ec2, found[0]) if found else None
        if ami is not None:
            snap = ami.get("BlockDeviceMappings", [{}])[0].get("Ebs", {}).get("SnapshotId", "")
            items = [PublishedItem(kind="ami", id=ami["ImageId"], digest=art.sha256, reused=True,
                                   url=self.console_url(session, ami["ImageId"]))]
            if snap:
                items.append(PublishedItem(kind="snapshot", id=snap, digest=art.sha256, reused=True))
            return self.receipt(ctx, [art], items)
        items = self.snapshot(session, ec2, ctx, art, tags)
        snapshot_id = items[-1].id
        ami_id = self.register(ec2, ctx, name, snapshot_id)
        ec2.create_tags(Resources=[ami_id, snapshot_id], Tags=tags)
        items.append(PublishedItem(kind="ami", id=ami_id, digest=art.sha256, url=self.console_url(session, ami_id)))
        return self.receipt(ctx, [art], items)

    def console_url(self, session: Any, ami_id: str) -> str:
        region = session.region_name
        return f"https://{region}.console.aws.amazon.com/ec2/home?region={region}#ImageDetails:imageId={ami_id}"

    def snapshot(self, session: Any, ec2: Any, ctx: PublishContext, art: Artifact,
                 tags: list[dict[str, str]]) -> list[PublishedItem]:
        existing = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": f"tag:{TAG_PREFIX}disk-sha256", "Values": [art.sha256]},
            {"Name": "status", "Values": ["completed"]}])["Snapshots"]
        if existing:
            return [PublishedItem(kind="snapshot", id=existing[0]["SnapshotId"], digest=art.sha256, reused=True)]
        if self.opts.method == "ebs-direct":
            return [self.ebs_direct(session.client("ebs"), ec2, ctx, art, tags)]
        s3_item = upload_s3(session.client("s3"), str(self.opts.bucket), self.s3_key(ctx, art), art, ctx)
        return [s3_item, self.import_snapshot(ec2, art, s3_item.id.split("/", 3)[3], tags)]

    def ebs_direct(self, ebs: Any, ec2: Any, ctx: PublishContext, art: Artifact,
                   tags: list[dict[str, str]]) -> PublishedItem:
        size_gib = max(1, math.ceil(art.size / GIB))
        started = ebs.start_snapshot(VolumeSize=size_gib, ClientToken=art.sha256[:64], Tags=tags,
                                     Description=f"assembler {ctx.outputs.image} {art.short}", Timeout=60)
        snapshot_id = started["SnapshotId"]
        task = ctx.progress.task(f"EBS {snapshot_id}: {art.path.name}", art.size)
        changed = 0
        zero = bytes(EBS_BLOCK)
        try:
            for offset, data in chunks(art.path, EBS_BLOCK):
                task.advance(len(data))
                if data == zero[: len(data)]:
                    continue  # a new snapshot reads as zeros: skip empty blocks
                data = data.ljust(EBS_BLOCK, b"\0")
                checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
                ebs.put_snapshot_block(SnapshotId=snapshot_id, BlockIndex=offset // EBS_BLOCK, BlockData=data,
                                       DataLength=EBS_BLOCK, Checksum=checksum, ChecksumAlgorithm="SHA256")
                changed += 1
        finally:
            task.close()
        ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=changed)
        self.wait_snapshot(ec2, snapshot_id)
        return PublishedItem(kind="snapshot", id=snapshot_id, digest=art.sha256)

    def wait_snapshot(self, ec2: Any, snapshot_id: str) -> None:
        deadline = time.monotonic() + self.opts.wait_timeout
        while time.monotonic() < deadline:
            state = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"]
            if state == "completed":
                return
            if state == "error":
                raise PublishError(f"snapshot {snapshot_id} failed", resolution="re-run the publish")
            time.sleep(self.opts.poll_interval)
        raise PublishError(f"snapshot {snapshot_id} not completed after {self.opts.wait_timeout} s",
                           resolution="re-run later: the snapshot is found by its tag once completed")

    def import_snapshot(self, ec2: Any, art: Artifact, key: str, tags: list[dict[str, str]]) -> PublishedItem:
        task = ec2.import_snapshot(
            Description=f"assembler {art.path.name}", RoleName=self.opts.role_name, ClientToken=art.sha256[:64],
            DiskContainer={"Description": art.path.name, "Format": IMPORT_FORMATS[art.format],
                           "UserBucket": {"S3Bucket": self.opts.bucket, "S3Key": key}},
            TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": tags}],
        )
        task_id = task["ImportTaskId"]
        deadline = time.monotonic() + self.opts.wait_timeout
        while time.monotonic() < deadline:
            tasks = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"]
            detail = tasks[0]["SnapshotTaskDetail"]
            if detail.get("Status") == "completed":
                return PublishedItem(kind="snapshot", id=detail["SnapshotId"], digest=art.sha256)
            if detail.get("Status") in ("deleted", "deleting"):
                raise PublishError(f"ImportSnapshot {task_id} failed: {detail.get('StatusMessage', '')}",
                                   resolution="check the vmimport role (docs/publish.md) and the disk format")
            time.sleep(self.opts.poll_interval)
        raise PublishError(f"ImportSnapshot {task_id} still running after {self.opts.wait_timeout} s",
                           resolution="re-run later: the same ClientToken picks the task up again")

    def register(self, ec2: Any, ctx: PublishContext, name: str, snapshot_id: str) -> str:
        resp = ec2.register_image(**register_request(name, snapshot_id, ctx.outputs.firmware, self.opts,
                                                     secure_boot=ctx.outputs.secure_boot,
                                                     architecture=ctx.outputs.architecture))
        return str(resp["ImageId"])


def register_request(name: str, snapshot_id: str, firmware: tuple[str, ...], opts: AwsOptions, *,
                     secure_boot: bool = False, architecture: str = "amd64") -> dict[str, Any]:
    root = "/dev/xvda"
    body = {
        "Name": name, "Description": f"assembler image {name}",
        "Architecture": ami_architecture(architecture, opts.architecture),
        "RootDeviceName": root, "VirtualizationType": "hvm", "EnaSupport": True, "BootMode": boot_mode(firmware),
        "BlockDeviceMappings": [{"DeviceName": root, "Ebs": {"SnapshotId": snapshot_id, "VolumeType": opts.volume_type,
                                                             "DeleteOnTermination": True}}],
    }
    if secure_boot:
        # NitroTPM needs the AMI to boot UEFI only (uefi-preferred would let a BIOS-only instance type
        # start it without TPM or Secure Boot). No UefiData: an instance then starts with an empty
        # variable store, in Secure Boot setup mode (see docs/publish.md).
        body |= {"BootMode": "uefi", "TpmSupport": "v2.0"}
    return body


def upload_s3(s3: Any, bucket: str, key: str, art: Artifact, ctx: PublishContext) -> PublishedItem:
    """Multipart upload that resumes a pending one for the same key (parts with a matching MD5 are kept)."""
    url = f"s3://{bucket}/{key}"
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head.get("Metadata", {}).get("sha256") == art.sha256:
            return PublishedItem(kind="s3-object", id=url, digest=art.sha256, reused=True)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    upload_id, done = pending_upload(s3, bucket, key)
    if upload_id is None:
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata={"sha256": art.sha256})["UploadId"]
    part_size = max(MIN_PART, math.ceil(art.size / MAX_PARTS / (1 << 20)) * (1 << 20))
    parts = []
    task = ctx.progress.task(f"{url}", art.size)
    try:
        for number, (_, data) in enumerate(chunks(art.path, part_size), 1):
            etag = done.get(number)
            if etag != hashlib.md5(data, usedforsecurity=False).hexdigest():
                etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                      Body=data)["ETag"].strip('"')
            parts.append({"PartNumber": number, "ETag": f'"{etag}"'})
            task.advance(len(data))
    finally:
        task.close()
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    return PublishedItem(kind="s3-object", id=url, digest=art.sha256)


def pending_upload(s3: Any, bucket: str, key: str) -> tuple[str | None, dict[int, str]]:
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    mine = [u for u in uploads if u["Key"] == key]
    if not mine:
        return None, {}
    upload_id = mine[-1]["UploadId"]
    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts", [])
    return upload_id, {int(p["PartNumber"]): str(p["ETag"]).strip('"') for p in parts}
