"""The aws provider against a moto server: the real boto3 calls (S3 multipart, EBS direct, EC2 AMIs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import boto3
import pytest

from assembler import providers
from assembler.providers.aws import AwsProvider, upload_s3
from assembler.providers.base import Artifact, PublishContext, PublishError
from tests.integration.publish_servers import Server, make_outputs, moto  # noqa: F401

pytestmark = pytest.mark.integration
SECRET = "test-secret-Zq9vX2-never-in-receipts"


@pytest.fixture
def aws_env(moto: Server, monkeypatch: pytest.MonkeyPatch) -> Server:  # noqa: F811
    """boto3's standard chain pointed at moto: AWS_ENDPOINT_URL and static keys."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{moto.port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAASSEMBLERTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return moto


def test_ebs_direct_registers_tagged_ami_and_rerun_is_noop(aws_env: Server, tmp_path: Path) -> None:
    out = make_outputs(tmp_path / "out", "awsdemo", [], firmware=("bios", "uefi"))
    receipt, path = providers.publish(out, "aws", {"method": "ebs-direct", "poll_interval": 0.1})
    raw = out / "awsdemo.raw"
    sha = hashlib.sha256(raw.read_bytes()).hexdigest()
    ec2 = boto3.client("ec2")
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:assembler:disk-sha256", "Values": [sha]}])
    assert len(images["Images"]) == 1
    ami = images["Images"][0]
    tags = {t["Key"]: t["Value"] for t in ami["Tags"]}
    assert ami["Name"] == f"awsdemo-{sha[:12]}" == tags["Name"]
    assert tags["assembler:oci-digest"] == "sha256:" + "ab" * 32
    assert tags["assembler:rootfs-sha256"] == "cd" * 32 and tags["assembler:assembler-version"]
    assert {i.kind: i.id for i in receipt.items}["ami"] == ami["ImageId"]

    # The snapshot holds the disk's non-zero blocks, byte for byte.
    snapshot_id = {i.kind: i.id for i in receipt.items}["snapshot"]
    ebs = boto3.client("ebs")
    blocks = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    data = raw.read_bytes()
    block = 512 * 1024
    nonzero = [i for i in range(len(data) // block) if any(data[i * block:(i + 1) * block])]
    assert [b["BlockIndex"] for b in blocks] == nonzero
    assert len(nonzero) == 3 * 2 + 2  # 3 MiB of data + the primary and backup GPT
    for block in blocks:
        got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"],
                                     BlockToken=block["BlockToken"])["BlockData"].read()
        offset = block["BlockIndex"] * 512 * 1024
        assert got == data[offset:offset + len(got)]

    assert SECRET not in path.read_text() and "AKIAASSEMBLERTEST" not in path.read_text()
    again, _ = providers.publish(out, "aws", {"method": "ebs-direct"})
    assert again.noop
    count = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [ami["Name"]]}])["Images"]
    assert len(count) == 1


def _text(body: str | bytes) -> str:
    return body.decode() if isinstance(body, bytes) else body


def recorded_register_requests(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """Every RegisterImage request as it goes over the wire to the server (the query-string body botocore
    serialised): moto keeps only some of its fields."""
    sent: list[dict[str, str]] = []
    register = AwsProvider.register

    def recording(self: AwsProvider, ec2: Any, *args: Any) -> str:
        ec2.meta.events.register("before-send.ec2.RegisterImage",
                                 lambda request, **_: sent.append(dict(parse_qsl(_text(request.body)))))
        return register(self, ec2, *args)
    monkeypatch.setattr(AwsProvider, "register", recording)
    return sent


def test_secure_boot_image_registers_uefi_with_nitro_tpm(aws_env: Server, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = make_outputs(tmp_path / "out", "sbdemo", [], firmware=("bios", "uefi"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["disk"]["secure_boot"] = True
    (out / "manifest.json").write_text(json.dumps(manifest))
    sent = recorded_register_requests(monkeypatch)
    receipt, _ = providers.publish(out, "aws", {"method": "ebs-direct", "poll_interval": 0.1})
    (request,) = sent
    assert request["BootMode"] == "uefi" and request["TpmSupport"] == "v2.0" and "UefiData" not in request
    ami = boto3.client("ec2").describe_images(ImageIds=[{i.kind: i.id for i in receipt.items}["ami"]])["Images"][0]
    # moto (5.2) keeps only Name and Description of a RegisterImage: every AMI reads back BootMode uefi
    # (its default) and without TpmSupport, so the request above is what shows the flags were sent.
    assert ami["BootMode"] == "uefi"
    assert ami.get("TpmSupport") in (None, "v2.0")


def test_an_arm64_build_registers_an_arm64_ami(aws_env: Server, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest of `assembler build IMAGE --arch arm64` says arm64: RegisterImage says so to EC2."""
    out = make_outputs(tmp_path / "out", "armdemo", [], firmware=("uefi",))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["disk"]["architecture"] = "arm64"
    (out / "manifest.json").write_text(json.dumps(manifest))
    sent = recorded_register_requests(monkeypatch)
    receipt, _ = providers.publish(out, "aws", {"method": "ebs-direct", "poll_interval": 0.1})
    (request,) = sent
    assert request["Architecture"] == "arm64" and request["BootMode"] == "uefi"
    assert {i.kind for i in receipt.items} >= {"ami", "snapshot"}


def test_s3_multipart_upload_resumes_pending_parts(aws_env: Server, tmp_path: Path) -> None:
    out = make_outputs(tmp_path / "out", "s3demo", [])
    raw = out / "s3demo.raw"
    art = Artifact("raw", raw, hashlib.sha256(raw.read_bytes()).hexdigest())
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="assembler-test", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    key = "images/s3demo.raw"
    # A previous run that died after its first 8 MiB part.
    upload = s3.create_multipart_upload(Bucket="assembler-test", Key=key, Metadata={"sha256": art.sha256})
    with raw.open("rb") as handle:
        s3.upload_part(Bucket="assembler-test", Key=key, UploadId=upload["UploadId"], PartNumber=1,
                       Body=handle.read(8 << 20))
    calls: list[Any] = []
    s3.meta.events.register("before-call.s3.UploadPart", lambda **kw: calls.append(kw))
    ctx = PublishContext(outputs=providers.BuildOutputs.load(out))
    item = upload_s3(s3, "assembler-test", key, art, ctx)
    assert len(calls) == 7  # 64 MiB in 8 MiB parts, the first one kept
    assert s3.get_object(Bucket="assembler-test", Key=key)["Body"].read() == raw.read_bytes()
    assert not s3.list_multipart_uploads(Bucket="assembler-test").get("Uploads")
    assert upload_s3(s3, "assembler-test", key, art, ctx).reused and not item.reused


def test_server_down_is_a_clear_error(aws_env: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = make_outputs(tmp_path / "out", "awsdown", [])
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(PublishError) as failed:
        providers.publish(out, "aws", {"method": "ebs-direct"})
    assert "AWS call failed: EndpointConnectionError" in failed.value.brief
    assert SECRET not in str(failed.value)
