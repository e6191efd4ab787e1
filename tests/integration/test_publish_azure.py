"""The azure provider's page-blob upload against Azurite (the real Azure Storage emulator)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from assembler import providers
from assembler.providers.base import PublishError
from tests.integration.publish_servers import (  # noqa: F401
    AZURITE_KEY,
    Server,
    azurite,
    azurite_connection_string,
    make_outputs,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def azure_env(azurite: Server, monkeypatch: pytest.MonkeyPatch) -> Server:  # noqa: F811
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string(azurite))
    return azurite


def blob_bytes(server: Server, container: str, name: str) -> bytes:
    service = BlobServiceClient.from_connection_string(azurite_connection_string(server))
    return bytes(service.get_blob_client(container, name).download_blob().readall())


def test_vhd_page_blob_equals_file_and_rerun_is_noop(azure_env: Server, tmp_path: Path) -> None:
    out = make_outputs(tmp_path / "out", "azdemo", ["vhd"])
    vhd = out / "azdemo.vhd"
    receipt, path = providers.publish(out, "azure", {"container": "images"})
    item = receipt.items[0]
    assert item.kind == "blob" and not item.reused
    name = item.id.split("/", 1)[1]
    assert blob_bytes(azure_env, "images", name) == vhd.read_bytes()
    text = path.read_text()
    assert AZURITE_KEY not in text and "AccountKey" not in text

    again, _ = providers.publish(out, "azure", {"container": "images"})
    assert again.noop


def test_a_sas_credential_never_reaches_the_receipt(azurite: Server, tmp_path: Path,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    BlobServiceClient.from_connection_string(azurite_connection_string(azurite)).create_container("sas")
    sas = generate_account_sas("devstoreaccount1", AZURITE_KEY, ResourceTypes(container=True, object=True),
                               AccountSasPermissions(read=True, write=True, create=True, list=True, add=True),
                               expiry=datetime.now(UTC) + timedelta(hours=1))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",  # a SAS, as CI systems hand them out: not a *KEY name
                       f"BlobEndpoint=http://127.0.0.1:{azurite.port}/devstoreaccount1;SharedAccessSignature={sas}")
    out = make_outputs(tmp_path / "out", "sasdemo", ["vhd"])
    receipt, path = providers.publish(out, "azure", {"container": "sas"})
    name = receipt.items[0].id.split("/", 1)[1]
    assert blob_bytes(azurite, "sas", name) == (out / "sasdemo.vhd").read_bytes()
    text = path.read_text()
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    assert "sig=" not in text and signature not in text and name in text


class StopAfterPages:
    """Progress reporter that stops Azurite once some page data has gone out."""

    def __init__(self, server: Server) -> None:
        self.server, self.sent, self.lock = server, 0, threading.Lock()

    def task(self, label: str, total: int) -> StopAfterPages:
        return self

    def advance(self, amount: int) -> None:
        with self.lock:
            self.sent += amount
            if self.sent > 12 << 20 and self.server.proc is not None:
                self.server.stop()

    def close(self) -> None:
        pass


def test_server_stopped_mid_upload_then_rerun_completes(azure_env: Server, tmp_path: Path) -> None:
    out = make_outputs(tmp_path / "out", "azresume", ["vhd"], seed=5)
    try:
        with pytest.raises(PublishError) as failed:
            providers.publish(out, "azure", {"container": "resume", "workers": 1, "retries": 0},
                              progress=StopAfterPages(azure_env))
    finally:
        if azure_env.proc is None:
            azure_env.start()
    assert "Azure call failed" in failed.value.brief and "resumes" in failed.value.resolution
    receipt, _ = providers.publish(out, "azure", {"container": "resume"})
    name = receipt.items[0].id.split("/", 1)[1]
    assert blob_bytes(azure_env, "resume", name) == (out / "azresume.vhd").read_bytes()
