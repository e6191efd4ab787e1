"""The oci provider against a real registry (Debian's docker-registry on 127.0.0.1), checked with skopeo."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
import requests

from assembler import providers
from assembler.providers.base import PublishError
from tests.helpers import cli
from tests.integration.publish_servers import Server, make_outputs, registry  # noqa: F401

pytestmark = pytest.mark.integration


def options(server: Server, **extra: object) -> dict[str, object]:
    return {"registry": f"127.0.0.1:{server.port}/test", "insecure": True, **extra}


def archive_digests(archive: Path) -> tuple[str, str]:
    """The containerDisk's image ID (config digest) and layer diff_id, from the docker-archive."""
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config = tar.extractfile(index["Config"]).read()  # type: ignore[union-attr]
    return "sha256:" + hashlib.sha256(config).hexdigest(), json.loads(config)["rootfs"]["diff_ids"][0]


def test_push_pull_back_and_rerun_is_noop(registry: Server, tmp_path: Path) -> None:  # noqa: F811
    out = make_outputs(tmp_path / "out", "ocidemo", ["qcow2", "kubevirt"])
    receipt, path = providers.publish(out, "oci", options(registry))
    assert not receipt.noop and path == out / "publish-oci.json"
    disk_item = next(i for i in receipt.items if i.kind == "containerdisk")
    ref = disk_item.id.split("@")[0]

    # Pull the containerDisk back with an independent client and compare digests.
    pulled = tmp_path / "pulled"
    cli_digest = _skopeo(["inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{ref}"])
    assert cli_digest.strip() == disk_item.digest
    _skopeo(["copy", "--preserve-digests", "--src-tls-verify=false", f"docker://{ref}", f"oci:{pulled}:x"])
    index = json.loads((pulled / "index.json").read_text())
    manifest = json.loads(_blob(pulled, index["manifests"][0]["digest"]))
    config_id, diff_id = archive_digests(out / "ocidemo-containerdisk.tar")
    assert manifest["config"]["digest"] == config_id
    assert [layer["digest"] for layer in manifest["layers"]] == [diff_id]
    assert index["manifests"][0]["digest"] == disk_item.digest
    layer_bytes = _blob(pulled, diff_id)
    assert "sha256:" + hashlib.sha256(layer_bytes).hexdigest() == diff_id
    assert ref.endswith(":" + config_id.removeprefix("sha256:")[:12])

    # The qcow2 artefact's blob comes back byte for byte.
    art = next(i for i in receipt.items if i.kind == "artifact")
    repo_tag = art.id.split("@")[0].split("/", 1)[1]
    repo, tag = repo_tag.rsplit(":", 1)
    base = f"http://127.0.0.1:{registry.port}/v2/{repo}"
    art_manifest = requests.get(f"{base}/manifests/{tag}", timeout=10,
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    blob = requests.get(f"{base}/blobs/{art_manifest['layers'][0]['digest']}", timeout=30).content
    assert blob == (out / "ocidemo.qcow2").read_bytes()
    assert art_manifest["layers"][0]["annotations"]["org.opencontainers.image.title"] == "ocidemo.qcow2"

    again, _ = providers.publish(out, "oci", options(registry))
    assert again.noop and all(item.reused for item in again.items)
    assert [i.digest for i in again.items] == [i.digest for i in receipt.items]


def test_cli_says_already_published(registry: Server, tmp_path: Path) -> None:  # noqa: F811
    make_outputs(tmp_path / "out", "clidemo", ["kubevirt"])
    args = ["publish", "clidemo", "--provider", "oci", "--registry", f"127.0.0.1:{registry.port}/cli",
            "--insecure", "--artifacts", "", "--out", str(tmp_path / "out")]
    first = cli(*args, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "published" in first.stderr
    second = cli(*args, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "already published" in second.stderr and "nothing to do" in second.stderr
    receipt = json.loads((tmp_path / "out" / "clidemo" / "publish-oci.json").read_text())
    assert receipt["noop"] is True and receipt["provider"] == "oci"


class StopServerAt:
    """A progress reporter that stops the server once an upload with `label` has sent some bytes."""

    def __init__(self, server: Server, label: str) -> None:
        self.server, self.label, self.fired = server, label, False

    def task(self, label: str, total: int) -> StopServerAt:
        self.current = label
        return self

    def advance(self, amount: int) -> None:
        if not self.fired and self.label in self.current:
            self.fired = True
            self.server.stop()

    def close(self) -> None:
        pass


def test_server_stopped_mid_upload_then_rerun_resumes(registry: Server, tmp_path: Path) -> None:  # noqa: F811
    out = make_outputs(tmp_path / "out", "resumedemo", ["qcow2", "kubevirt"], seed=7)
    stopper = StopServerAt(registry, "resumedemo.qcow2")
    try:
        with pytest.raises(PublishError) as failed:
            providers.publish(out, "oci", options(registry), progress=stopper)
    finally:
        if registry.proc is None:
            registry.start()
    assert stopper.fired
    assert "cannot reach the registry" in failed.value.brief
    assert "re-running resumes" in failed.value.resolution
    assert not (out / "publish-oci.json").exists()

    receipt, _ = providers.publish(out, "oci", options(registry))
    kinds = {i.kind: i.reused for i in receipt.items}
    assert kinds == {"containerdisk": True, "artifact": False}  # the containerDisk made it before the stop


def test_unreachable_registry_is_a_clear_error(tmp_path: Path) -> None:
    out = make_outputs(tmp_path / "out", "downdemo", ["kubevirt"])
    with pytest.raises(PublishError) as failed:
        providers.publish(out, "oci", {"registry": "127.0.0.1:9/x", "insecure": True, "artifacts": []})
    assert "cannot reach the registry 127.0.0.1:9" in failed.value.brief


def _skopeo(args: list[str]) -> str:
    from assembler.run import output

    return output(["skopeo", *args])


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
