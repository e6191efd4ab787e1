"""Publish providers without servers: registry, options, receipts, and the exact cloud requests (fakes)."""

from __future__ import annotations

import hashlib
import json
import logging
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

import assembler.providers as providers
from assembler.errors import ConfigError
from assembler.providers import ProviderName, builtin_providers, load_providers, resolve
from assembler.providers.aws import AwsOptions, AwsProvider, boot_mode, register_request
from assembler.providers.azure import (
    AzureOptions,
    AzureProvider,
    gallery_version_request,
    image_request,
    security_type,
)
from assembler.providers.base import Artifact, BuildOutputs, PublishContext, Receipt, write_receipt
from assembler.providers.gcp import GcpProvider, gce_name, image_body
from assembler.providers.openstack import OpenStackProvider
from assembler.providers.vsphere import VsphereProvider
from tests.helpers import cli

MIB = 1 << 20


def fake_outputs(root: Path, image: str = "demo", firmware: tuple[str, ...] = ("bios", "uefi"),
                 secure_boot: bool = False, architecture: str | None = None) -> Path:
    """out/IMAGE/ with small stand-in files (no qemu-img): the providers only read bytes and digests."""
    out = root / image
    out.mkdir(parents=True)
    files = {"raw": f"{image}.raw", "qcow2": f"{image}.qcow2", "vhd": f"{image}.vhd", "gce": f"{image}-gce.tar.gz",
             "ova": f"{image}.ova", "vmdk": f"{image}.vmdk"}
    outputs = []
    for fmt, name in files.items():
        data = (fmt.encode() * 1000)[: 2 * MIB + 512 if fmt == "vhd" else 4096]
        (out / name).write_bytes(data)
        outputs.append({"format": fmt, "path": name, "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"image": image, "outputs": outputs, "oci": {"digest": "sha256:" + "ab" * 32},
                "rootfs": {"sha256": "cd" * 32}, "disk": {"firmware": list(firmware)}}
    if secure_boot:
        manifest["disk"]["secure_boot"] = True
    if architecture:
        manifest["disk"]["architecture"] = architecture
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def ctx_for(out: Path) -> PublishContext:
    return PublishContext(outputs=BuildOutputs.load(out))


# ---------------------------------------------------------------------------------------------- registry


def test_builtin_registry_is_keyed_by_enum_and_fresh() -> None:
    first, second = builtin_providers(), builtin_providers()
    assert list(first) == list(ProviderName)
    assert all(first[k] is not second[k] for k in first)
    assert all(first[k].name == k.value for k in first)


class ThirdParty(VsphereProvider):
    name = "thirdparty"


def test_entry_point_plugins_load_and_cannot_override(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [EntryPoint("thirdparty", f"{__name__}:ThirdParty", "assembler.providers"),
              EntryPoint("oci", f"{__name__}:ThirdParty", "assembler.providers")]
    monkeypatch.setattr(providers, "entry_points", lambda group: points if group == "assembler.providers" else [])
    loaded = load_providers()
    assert isinstance(loaded["thirdparty"], ThirdParty)
    assert type(loaded["oci"]).__name__ == "OciProvider"


def test_broken_plugin_and_unknown_provider_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "entry_points",
                        lambda group: [EntryPoint("bad", "json:dumps", "assembler.providers")])
    with pytest.raises(ConfigError, match="is not a Provider"):
        load_providers()
    monkeypatch.setattr(providers, "entry_points", lambda group: [])
    with pytest.raises(ConfigError, match="unknown provider: nope") as err:
        resolve("nope")
    assert "oci, aws, azure" in err.value.resolution


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="invalid options for provider oci") as err:
        resolve("oci", {"registry": "http://x"})
    assert "--registry (required)" in err.value.resolution
    with pytest.raises(ConfigError):
        resolve("aws", {"bucket": "b", "registry": "r"})  # another provider's option
    oci = resolve("oci", {"registry": "127.0.0.1:5000/team", "artifacts": "qcow2, ova"})
    assert oci.options.model_dump()["artifacts"] == ["qcow2", "ova"]


# ----------------------------------------------------------------------------------------------- receipt


def test_receipt_is_atomic_and_redacts_secret_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("GOVC_PASSWORD", "hunter2-pw")
    receipt = Receipt(provider="x", image="demo", target={"note": "very-secret-value"},
                      items=[providers.base.PublishedItem(kind="k", id="hunter2-pw", reused=True)])
    path = write_receipt(tmp_path, receipt)
    text = path.read_text()
    assert path.name == "publish-x.json" and json.loads(text)["noop"] is True
    assert "very-secret-value" not in text and "hunter2-pw" not in text and "***" in text
    assert [p.name for p in tmp_path.iterdir()] == ["publish-x.json"]


def test_missing_build_outputs_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"manifest\.json is missing") as err:
        BuildOutputs.load(tmp_path / "nothing")
    assert "assembler build nothing" in err.value.resolution


def test_labels_carry_versions_and_digests(tmp_path: Path) -> None:
    outputs = BuildOutputs.load(fake_outputs(tmp_path))
    art = outputs.artifact("qcow2")
    labels = outputs.labels(art)
    assert labels["disk-sha256"] == art.sha256 and labels["oci-digest"] == "sha256:" + "ab" * 32
    assert labels["rootfs-sha256"] == "cd" * 32 and labels["assembler-version"]


# ---------------------------------------------------------------------------------------------------- aws


def test_boot_mode_follows_firmware() -> None:
    assert boot_mode(("bios", "uefi")) == "uefi-preferred"
    assert boot_mode(("uefi",)) == "uefi"
    assert boot_mode(("bios",)) == "legacy-bios"


def stubbed(service: str) -> tuple[Any, Stubber]:
    client = boto3.client(service, region_name="eu-west-1", aws_access_key_id="AKIAX", aws_secret_access_key="s")
    return client, Stubber(client)


def test_import_snapshot_and_register_send_the_documented_requests(tmp_path: Path) -> None:
    out = fake_outputs(tmp_path, firmware=("uefi",))
    ctx = ctx_for(out)
    provider = resolve("aws", {"bucket": "bkt", "poll_interval": 0})
    assert isinstance(provider, AwsProvider)
    art = ctx.outputs.artifact("vmdk")
    ec2, stub = stubbed("ec2")
    tags = [{"Key": "Name", "Value": "demo"}]
    stub.add_response("import_snapshot", {"ImportTaskId": "import-snap-1"}, {
        "Description": "assembler demo.vmdk", "RoleName": "vmimport", "ClientToken": art.sha256,
        "DiskContainer": {"Description": "demo.vmdk", "Format": "VMDK",
                          "UserBucket": {"S3Bucket": "bkt", "S3Key": "k/demo.vmdk"}},
        "TagSpecifications": [{"ResourceType": "import-snapshot-task", "Tags": tags}]})
    stub.add_response("describe_import_snapshot_tasks", {"ImportSnapshotTasks": [
        {"ImportTaskId": "import-snap-1", "SnapshotTaskDetail": {"Status": "active"}}]},
        {"ImportTaskIds": ["import-snap-1"]})
    stub.add_response("describe_import_snapshot_tasks", {"ImportSnapshotTasks": [
        {"ImportTaskId": "import-snap-1", "SnapshotTaskDetail": {"Status": "completed", "SnapshotId": "snap-1"}}]},
        {"ImportTaskIds": ["import-snap-1"]})
    body = register_request("demo-x", "snap-1", ("uefi",), AwsOptions())
    stub.add_response("register_image", {"ImageId": "ami-1"}, body)
    with stub:
        item = provider.import_snapshot(ec2, art, "k/demo.vmdk", tags)
        assert item.id == "snap-1"
        assert provider.register(ec2, ctx, "demo-x", "snap-1") == "ami-1"
    assert body["BootMode"] == "uefi" and body["EnaSupport"] is True
    assert body["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == "snap-1"


def test_failed_import_task_is_a_publish_error(tmp_path: Path) -> None:
    ctx = ctx_for(fake_outputs(tmp_path))
    provider = resolve("aws", {"bucket": "bkt", "poll_interval": 0})
    assert isinstance(provider, AwsProvider)
    ec2, stub = stubbed("ec2")
    stub.add_response("import_snapshot", {"ImportTaskId": "t"})
    stub.add_response("describe_import_snapshot_tasks", {"ImportSnapshotTasks": [
        {"SnapshotTaskDetail": {"Status": "deleted", "StatusMessage": "ClientError: role vmimport missing"}}]})
    with stub, pytest.raises(providers.PublishError, match="role vmimport missing") as err:
        provider.import_snapshot(ec2, ctx.outputs.artifact("vmdk"), "k", [])
    assert "vmimport role" in err.value.resolution


def test_aws_import_needs_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --bucket"):
        providers.publish(fake_outputs(tmp_path), "aws", {})


# -------------------------------------------------------------------------------------------------- azure


class FakePoller:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class FakeCompute:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.images = SimpleNamespace(get=self._missing, begin_create_or_update=self._create("images"))
        self.gallery_image_versions = SimpleNamespace(get=self._missing,
                                                      begin_create_or_update=self._create("versions"))
        self.gallery_images = SimpleNamespace(get=self._missing)  # no definition: Azure's own error then

    def _missing(self, *args: Any) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        raise ResourceNotFoundError("not found")

    def _create(self, kind: str) -> Any:
        def create(*args: Any) -> FakePoller:
            self.calls.append((kind, args))
            return FakePoller(SimpleNamespace(id=f"/subscriptions/s/{kind}/{args[-2]}"))
        return create


def test_azure_image_and_gallery_requests(tmp_path: Path) -> None:
    ctx = ctx_for(fake_outputs(tmp_path, firmware=("bios", "uefi")))
    opts = {"resource_group": "rg", "location": "westeurope", "gallery": "gal", "gallery_image": "deb",
            "gallery_version": "1.2.3", "storage_account_id": "/subscriptions/s/sa"}
    provider = resolve("azure", opts)
    assert isinstance(provider, AzureProvider)
    fake = FakeCompute()
    provider.compute_client = lambda: fake  # type: ignore[method-assign]
    art = ctx.outputs.artifact("vhd")
    items = provider.create_images(ctx, art, "https://sa.blob/x.vhd", {"assembler-image": "demo"})
    assert [i.kind for i in items] == ["image", "gallery-image-version"]
    (kind, args), (kind2, args2) = fake.calls
    assert (kind, kind2) == ("images", "versions")
    assert args[:2] == ("rg", f"demo-{art.short}")
    assert args[2] == image_request(AzureOptions(**opts), "https://sa.blob/x.vhd", ("bios", "uefi"),
                                    {"assembler-image": "demo"})
    assert args[2]["hyper_v_generation"] == "V2"
    assert args[2]["storage_profile"]["os_disk"] == {"os_type": "Linux", "os_state": "Generalized",
                                                     "blob_uri": "https://sa.blob/x.vhd", "caching": "ReadWrite"}
    assert args2[:4] == ("rg", "gal", "deb", "1.2.3")
    body = gallery_version_request(AzureOptions(**opts), "https://sa.blob/x.vhd", {"assembler-image": "demo"})
    assert args2[4] == body
    assert body["storage_profile"]["os_disk_image"]["source"]["uri"] == "https://sa.blob/x.vhd"


def test_azure_rejects_unaligned_vhd_and_incomplete_gallery(tmp_path: Path) -> None:
    out = fake_outputs(tmp_path)
    (out / "demo.vhd").write_bytes(b"x" * 1000)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["outputs"]:
        if entry["format"] == "vhd":
            entry["sha256"] = hashlib.sha256(b"x" * 1000).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="not a fixed VHD"):
        providers.publish(out, "azure", {})
    provider = resolve("azure", {"gallery": "g", "location": "x"})
    assert isinstance(provider, AzureProvider)
    (tmp_path / "ok.vhd").write_bytes(bytes(MIB + 512))
    with pytest.raises(ConfigError, match="gallery image version needs"):
        provider.validate(Artifact("vhd", tmp_path / "ok.vhd", "0" * 64))


# ---------------------------------------------------------------------------------------------------- gcp


class FakeBlob:
    def __init__(self, store: dict[str, Any], name: str, chunk_size: int | None = None) -> None:
        self.store, self.name, self.metadata = store, name, None
        self.chunk_size = chunk_size

    def exists(self) -> bool:
        return self.name in self.store

    def reload(self) -> None:
        self.metadata = self.store[self.name]["metadata"]

    def upload_from_file(self, handle: Any, size: int, content_type: str) -> None:
        data = handle.read()
        assert len(data) == size and handle.tell() == size
        self.store[self.name] = {"data": data, "metadata": self.metadata, "content_type": content_type}


class FakeImages:
    def __init__(self) -> None:
        self.inserted: list[dict[str, Any]] = []

    def get(self, project: str, image: str) -> Any:
        if any(body["name"] == image for body in self.inserted):
            return SimpleNamespace(name=image)
        from google.api_core.exceptions import NotFound

        raise NotFound("no image")


def test_gcp_uploads_then_inserts_and_rerun_is_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = fake_outputs(tmp_path, image="Demo_Img", firmware=("bios", "uefi"))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    store: dict[str, Any] = {}
    images = FakeImages()
    bucket = SimpleNamespace(blob=lambda name, chunk_size=None: FakeBlob(store, name, chunk_size))
    monkeypatch.setattr(GcpProvider, "storage_client", lambda self, project: SimpleNamespace(bucket=lambda n: bucket))
    monkeypatch.setattr(GcpProvider, "images_client", lambda self: images)
    monkeypatch.setattr(GcpProvider, "insert_image", lambda self, cl, project, body: cl.inserted.append(body))
    receipt, _ = providers.publish(out, "gcp", {"bucket": "bkt", "family": "debian-12"})
    art = BuildOutputs.load(out).artifact("gce")
    name = f"demo-img-{art.short}"
    assert (out / "Demo_Img-gce.tar.gz").read_bytes() == store[f"assembler/{name}.tar.gz"]["data"]
    body = images.inserted[0]
    assert body["name"] == name and body["family"] == "debian-12"
    assert body["raw_disk"] == {"source": f"https://storage.googleapis.com/bkt/assembler/{name}.tar.gz"}
    assert body["guest_os_features"] == [{"type_": "UEFI_COMPATIBLE"}]
    assert body["labels"]["disk-sha256"] == art.sha256[:63] and art.sha256 in body["description"]
    assert not receipt.noop
    again, _ = providers.publish(out, "gcp", {"bucket": "bkt"})
    assert again.noop and len(images.inserted) == 1


def test_gce_names_and_bodies_follow_the_rules() -> None:
    assert gce_name("Debian_12.x-") == "debian-12-x"
    assert gce_name("9lives") == "img-9lives"
    assert len(gce_name("a" * 100)) == 63
    assert image_body("n", "u", ("bios",), {}, None)["guest_os_features"] == []


# ---------------------------------------------------------------------------------------------- openstack


class FakeGlance:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.deleted: list[Any] = []
        self.existing: list[Any] = []

    def images(self, name: str) -> list[Any]:
        return [i for i in self.existing if i.name == name]

    def create_image(self, **kwargs: Any) -> Any:
        self.created.append(kwargs)
        image = SimpleNamespace(id="img-1", name=kwargs["name"], status="active",
                                properties={"assembler_disk_sha256": kwargs["assembler_disk_sha256"]})
        self.existing.append(image)
        return image

    def delete_image(self, image: Any, ignore_missing: bool) -> None:
        self.deleted.append(image)
        self.existing.remove(image)


def test_openstack_creates_glance_image_with_properties_once(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = fake_outputs(tmp_path, firmware=("uefi",))
    glance = FakeGlance()
    glance.existing.append(SimpleNamespace(id="old", name="", status="queued", properties={}))
    monkeypatch.setattr(OpenStackProvider, "connect", lambda self: SimpleNamespace(image=glance))
    art = BuildOutputs.load(out).artifact("qcow2")
    glance.existing[0].name = f"demo-{art.short}"
    receipt, _ = providers.publish(out, "openstack", {"os_distro": "debian"})
    call = glance.created[0]
    assert call["disk_format"] == "qcow2" and call["container_format"] == "bare"
    assert call["filename"] == str(out / "demo.qcow2") and call["visibility"] == "private"
    assert call["hw_firmware_type"] == "uefi" and call["os_distro"] == "debian"
    assert call["assembler_disk_sha256"] == art.sha256
    assert [i.id for i in glance.deleted] == ["old"]  # a queued leftover is replaced
    assert receipt.items[0].id == "img-1"
    again, _ = providers.publish(out, "openstack", {})
    assert again.noop and len(glance.created) == 1


# ------------------------------------------------------------------------------------------------ vsphere


def test_vsphere_plan_is_govc_commands(tmp_path: Path) -> None:
    out = fake_outputs(tmp_path)
    art = BuildOutputs.load(out).artifact("ova")
    steps = providers.plan(out, "vsphere", {"library": "images", "datastore": "ds1"})
    assert steps == [f"govc library.info /images/demo-{art.short}",
                     "govc library.create -ds=ds1 images",
                     f"govc library.import -n demo-{art.short} images {out / 'demo.ova'}"]
    inventory = providers.plan(out, "vsphere", {"folder": "/dc/vm/templates"})
    assert inventory[1] == f"govc import.ova -name=demo-{art.short} -folder=/dc/vm/templates {out / 'demo.ova'}"
    assert inventory[2] == f"govc vm.markastemplate demo-{art.short}"


# ---------------------------------------------------------------------------------------------------- cli


def test_cli_dry_run_and_errors(tmp_path: Path) -> None:
    fake_outputs(tmp_path)
    ok = cli("publish", "demo", "--provider", "vsphere", "--library", "lib", "--out", str(tmp_path), "--dry-run",
             timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "govc library.import" in ok.stderr
    bad = cli("publish", "demo", "--provider", "nope", "--out", str(tmp_path), timeout=60)
    assert bad.returncode == 1 and "unknown provider: nope" in bad.stderr
    wrong = cli("publish", "demo", "--provider", "aws", "--registry", "x:1", "--out", str(tmp_path), timeout=60)
    assert wrong.returncode == 1 and "invalid options for provider aws" in wrong.stderr


# ------------------------------------------------------------------- publish state and what receipts carry


def test_a_failed_or_pending_ami_of_the_name_is_not_reported_as_published() -> None:
    ec2, stub = stubbed("ec2")
    provider = AwsProvider(AwsOptions.model_validate({"region": "us-east-1"}))
    available = {"ImageId": "ami-1", "Name": "demo-x", "State": "available"}
    with stub:
        assert provider.usable(ec2, available) == available  # no call: reused as it is
        stub.add_response("deregister_image", {}, {"ImageId": "ami-2"})
        assert provider.usable(ec2, {"ImageId": "ami-2", "Name": "demo-x", "State": "failed"}) is None
        stub.add_response("describe_images", {"Images": [{"ImageId": "ami-3", "State": "available"}]},
                          {"ImageIds": ["ami-3"]})  # the waiter's poll
        stub.add_response("describe_images", {"Images": [{"ImageId": "ami-3", "State": "available"}]},
                          {"ImageIds": ["ami-3"]})
        assert provider.usable(ec2, {"ImageId": "ami-3", "State": "pending"}) == {"ImageId": "ami-3",
                                                                                  "State": "available"}
        stub.assert_no_pending_responses()


class StatefulImages(FakeImages):
    def __init__(self, statuses: list[str]) -> None:
        super().__init__()
        self.statuses, self.deleted = statuses, []  # type: ignore[var-annotated]

    def get(self, project: str, image: str) -> Any:
        if self.statuses:
            return SimpleNamespace(name=image, status=self.statuses.pop(0))
        return super().get(project, image)

    def delete(self, project: str, image: str) -> Any:
        self.deleted.append(image)
        return SimpleNamespace(result=lambda timeout: None)


def test_a_failed_gce_image_is_replaced_and_a_pending_one_waited_for() -> None:
    provider = GcpProvider()
    failed = StatefulImages(["FAILED"])
    assert provider.ready_image(failed, "p", "img", poll=0) is None and failed.deleted == ["img"]
    pending = StatefulImages(["PENDING", "PENDING", "READY"])
    assert provider.ready_image(pending, "p", "img", poll=0).status == "READY" and not pending.deleted
    stuck = StatefulImages(["DELETING"] * 5)
    with pytest.raises(providers.PublishError, match="stayed DELETING"):
        provider.ready_image(stuck, "p", "img", poll=0, timeout=0)


def test_receipts_never_carry_url_credentials(tmp_path: Path) -> None:
    from assembler.providers.base import PublishedItem, bare_url

    sas = ("https://acct.blob.core.windows.net/vhds/demo.vhd?sv=2023-11-03&ss=b&srt=sco&sp=rwdlac"
           "&se=2026-12-31T00:00:00Z&st=2026-12-01T00:00:00Z&spr=https&sig=c2VjcmV0JTJCc2lnbmF0dXJl")
    assert bare_url(sas) == "https://acct.blob.core.windows.net/vhds/demo.vhd"
    console = "https://console.aws.amazon.com/ec2/home?region=eu-west-1#ImageDetails:imageId=ami-1"
    assert bare_url(console) == console
    assert bare_url("https://user:pw@host/p?X-Amz-Signature=abc&X-Amz-Credential=k&part=2") == "https://host/p?part=2"
    receipt = Receipt(provider="azure", image="demo", items=[PublishedItem(kind="blob", id="vhds/demo.vhd", url=sas)])
    text = write_receipt(tmp_path, receipt).read_text()
    assert "sig=" not in text and "c2VjcmV0" not in text and "demo.vhd" in text


def test_publish_refuses_an_output_changed_since_the_build(tmp_path: Path) -> None:
    out = fake_outputs(tmp_path)
    with (out / "demo.raw").open("r+b") as handle:
        handle.write(b"X")  # same size, other bytes: the manifest's digest no longer describes the file
    with pytest.raises(ConfigError, match="changed since the build"):
        BuildOutputs.load(out).artifact("raw")
    qcow2 = BuildOutputs.load(out).artifact("qcow2")
    assert qcow2.sha256 == hashlib.sha256((out / "demo.qcow2").read_bytes()).hexdigest()


# ------------------------------------------------------------------- Secure Boot + TPM (manifest's disk record)


def test_secure_boot_needs_the_manifest_flag_and_uefi(tmp_path: Path) -> None:
    assert BuildOutputs.load(fake_outputs(tmp_path / "a", firmware=("uefi",), secure_boot=True)).secure_boot
    assert BuildOutputs.load(fake_outputs(tmp_path / "b", firmware=("bios", "uefi"), secure_boot=True)).secure_boot
    assert not BuildOutputs.load(fake_outputs(tmp_path / "c", firmware=("bios",), secure_boot=True)).secure_boot
    assert not BuildOutputs.load(fake_outputs(tmp_path / "d", firmware=("uefi",))).secure_boot  # older manifest


def test_aws_secure_boot_registers_uefi_only_with_nitro_tpm(tmp_path: Path) -> None:
    plain = register_request("demo-x", "snap-1", ("bios", "uefi"), AwsOptions())
    assert plain["BootMode"] == "uefi-preferred" and "TpmSupport" not in plain and "UefiData" not in plain
    secure = register_request("demo-x", "snap-1", ("bios", "uefi"), AwsOptions(), secure_boot=True)
    assert secure == plain | {"BootMode": "uefi", "TpmSupport": "v2.0"}

    ctx = ctx_for(fake_outputs(tmp_path, firmware=("bios", "uefi"), secure_boot=True))
    provider = resolve("aws", {"method": "ebs-direct"})
    assert isinstance(provider, AwsProvider)
    assert "RegisterImage x86_64, ENA, BootMode uefi, TpmSupport v2.0 (Secure Boot image)" in provider.plan(ctx)[-1]
    ec2, stub = stubbed("ec2")
    stub.add_response("register_image", {"ImageId": "ami-1"}, secure)  # validated against the EC2 API model
    with stub:
        assert provider.register(ec2, ctx, "demo-x", "snap-1") == "ami-1"
    plain_ctx = ctx_for(fake_outputs(tmp_path / "plain", firmware=("bios", "uefi")))
    assert provider.plan(plain_ctx)[-1].startswith("RegisterImage x86_64, ENA, BootMode uefi-preferred;")


def test_gce_secure_boot_adds_the_guest_os_feature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import compute_v1

    features = image_body("n", "u", ("bios", "uefi"), {}, None, secure_boot=True)["guest_os_features"]
    assert features == [{"type_": "UEFI_COMPATIBLE"}, {"type_": "SECURE_BOOT"}]
    assert [f.type_ for f in compute_v1.Image(guest_os_features=features).guest_os_features] == [
        "UEFI_COMPATIBLE", "SECURE_BOOT"]  # names the Compute API's enum knows
    assert image_body("n", "u", ("uefi",), {}, None)["guest_os_features"] == [{"type_": "UEFI_COMPATIBLE"}]
    assert image_body("n", "u", ("bios",), {}, None, secure_boot=True)["guest_os_features"] == []

    out = fake_outputs(tmp_path, firmware=("uefi",), secure_boot=True)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    images = FakeImages()
    bucket = SimpleNamespace(blob=lambda name, chunk_size=None: FakeBlob({}, name, chunk_size))
    monkeypatch.setattr(GcpProvider, "storage_client", lambda self, project: SimpleNamespace(bucket=lambda n: bucket))
    monkeypatch.setattr(GcpProvider, "images_client", lambda self: images)
    monkeypatch.setattr(GcpProvider, "insert_image", lambda self, cl, project, body: cl.inserted.append(body))
    provider = resolve("gcp", {"bucket": "bkt"})
    assert provider.plan(ctx_for(out))[-1].endswith("guestOsFeatures UEFI_COMPATIBLE, SECURE_BOOT")
    providers.publish(out, "gcp", {"bucket": "bkt"})
    assert images.inserted[0]["guest_os_features"] == [{"type_": "UEFI_COMPATIBLE"}, {"type_": "SECURE_BOOT"}]


class FakeGalleryCompute(FakeCompute):
    def __init__(self, security: str | None, architecture: str | None = None) -> None:
        super().__init__()
        features = [SimpleNamespace(name="SecurityType", value=security)] if security else []
        self.looked_up: list[tuple[Any, ...]] = []

        def get(*args: Any) -> Any:
            self.looked_up.append(args)
            return SimpleNamespace(features=features, architecture=architecture)
        self.gallery_images = SimpleNamespace(get=get)


AZURE_GALLERY = {"resource_group": "rg", "location": "westeurope", "gallery": "gal", "gallery_image": "deb",
                 "gallery_version": "1.2.3", "storage_account_id": "/subscriptions/s/sa"}


@pytest.mark.parametrize(("security", "warned"), [("TrustedLaunch", False), ("TrustedLaunchSupported", False),
                                                  (None, True), ("ConfidentialVM", True)])
def test_azure_secure_boot_checks_the_gallery_definition_for_trusted_launch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, security: str | None, warned: bool) -> None:
    ctx = ctx_for(fake_outputs(tmp_path, firmware=("uefi",), secure_boot=True))
    provider = resolve("azure", AZURE_GALLERY)
    assert isinstance(provider, AzureProvider)
    fake = FakeGalleryCompute(security)
    provider.compute_client = lambda: fake  # type: ignore[method-assign]
    art = ctx.outputs.artifact("vhd")
    with caplog.at_level(logging.WARNING, logger="assembler"):
        items = provider.create_images(ctx, art, "https://sa.blob/x.vhd", {})
    assert [i.kind for i in items] == ["image", "gallery-image-version"]
    assert fake.looked_up == [("rg", "gal", "deb")]
    assert ("has SecurityType" in caplog.text) is warned
    if warned:
        assert f"SecurityType {security or 'Standard'}" in caplog.text and "SecurityType=TrustedLaunch" in caplog.text
    # The managed image has no security type to set (Azure: Trusted Launch only from a gallery).
    assert fake.calls[0][1][2] == image_request(AzureOptions(**AZURE_GALLERY), "https://sa.blob/x.vhd", ("uefi",), {})
    plan = provider.plan(ctx)
    assert "(a managed image: no Trusted Launch" in plan[1]
    assert "check that gallery image definition gal/deb has SecurityType TrustedLaunch (Secure Boot image)" in plan


def test_azure_without_secure_boot_checks_only_the_definitions_architecture(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctx = ctx_for(fake_outputs(tmp_path, firmware=("uefi",)))
    provider = resolve("azure", AZURE_GALLERY)
    assert isinstance(provider, AzureProvider)
    fake = FakeGalleryCompute(None)
    provider.compute_client = lambda: fake  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="assembler"):
        provider.create_images(ctx, ctx.outputs.artifact("vhd"), "https://sa.blob/x.vhd", {})
    assert fake.looked_up == [("rg", "gal", "deb")] and "SecurityType" not in caplog.text
    assert "check that gallery image definition gal/deb has architecture x64" in provider.plan(ctx)
    assert not any("Trusted Launch" in step or "SecurityType" in step for step in provider.plan(ctx))


def test_azure_security_type_reads_the_sdk_model() -> None:
    from azure.mgmt.compute import models

    definition = models.GalleryImage(location="x", properties=models.GalleryImageProperties(
        os_type="Linux", os_state="Generalized",
        identifier=models.GalleryImageIdentifier(publisher="p", offer="o", sku="s"),
        features=[models.GalleryImageFeature(name="SecurityType", value="TrustedLaunch")]))
    assert security_type(definition) == "TrustedLaunch"
    assert security_type(SimpleNamespace(features=None)) is None


# -------------------------------------------------------------------------------------------- arm64 disks


def test_every_cloud_is_told_the_disks_architecture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An arm64 build (manifest disk.architecture) is registered as arm64 everywhere; amd64 stays x86."""
    arm = ctx_for(fake_outputs(tmp_path / "arm", firmware=("uefi",), architecture="arm64"))
    old = ctx_for(fake_outputs(tmp_path / "old", "old", firmware=("uefi",)))  # a manifest from before the field
    assert (arm.outputs.architecture, old.outputs.architecture) == ("arm64", "amd64")
    # AWS: RegisterImage Architecture; an option naming the other one is refused before any upload.
    assert register_request("n", "s", ("uefi",), AwsOptions(), architecture="arm64")["Architecture"] == "arm64"
    assert register_request("n", "s", ("uefi",), AwsOptions())["Architecture"] == "x86_64"
    aws = resolve("aws", {"method": "ebs-direct"})
    assert "RegisterImage arm64," in aws.plan(arm)[-1]
    with pytest.raises(ConfigError, match="disk boots arm64") as err:
        resolve("aws", {"method": "ebs-direct", "architecture": "x86_64"}).publish(arm)
    assert "--arch" in err.value.resolution
    # GCE: Image.architecture.
    assert image_body("n", "u", ("uefi",), {}, None, architecture="arm64")["architecture"] == "ARM64"
    assert image_body("n", "u", ("uefi",), {}, None)["architecture"] == "X86_64"
    # OpenStack: Glance's architecture property and an Arm machine type (q35 is x86 only).
    glance = FakeGlance()
    monkeypatch.setattr(OpenStackProvider, "connect", lambda self: SimpleNamespace(image=glance))
    providers.publish(arm.outputs.directory, "openstack", {})
    assert (glance.created[0]["architecture"], glance.created[0]["hw_machine_type"]) == ("aarch64", "virt")
    providers.publish(old.outputs.directory, "openstack", {})
    assert (glance.created[1]["architecture"], glance.created[1]["hw_machine_type"]) == ("x86_64", "q35")


def test_azure_takes_arm64_through_a_gallery_definition_of_that_architecture(tmp_path: Path) -> None:
    ctx = ctx_for(fake_outputs(tmp_path, firmware=("uefi",), architecture="arm64"))
    managed_only = resolve("azure", {"resource_group": "rg", "location": "westeurope"})
    assert isinstance(managed_only, AzureProvider)
    with pytest.raises(ConfigError, match="through a Compute Gallery only"):
        managed_only.validate(ctx.outputs.artifact("vhd"), "arm64")
    provider = resolve("azure", AZURE_GALLERY)
    assert isinstance(provider, AzureProvider)
    x64 = FakeGalleryCompute(None, architecture=None)  # Azure's default: x64
    provider.compute_client = lambda: x64  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="gal/deb is x64, the disk boots arm64") as err:
        provider.create_images(ctx, ctx.outputs.artifact("vhd"), "https://sa.blob/x.vhd", {})
    assert "--architecture Arm64" in err.value.resolution and x64.calls == []  # nothing created
    arm = FakeGalleryCompute(None, architecture="Arm64")
    provider.compute_client = lambda: arm  # type: ignore[method-assign]
    items = provider.create_images(ctx, ctx.outputs.artifact("vhd"), "https://sa.blob/x.vhd", {})
    assert [i.kind for i in items] == ["gallery-image-version"]  # no managed image: it cannot be Arm64
    assert not any(step.startswith("create image ") for step in provider.plan(ctx))
