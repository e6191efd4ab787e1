"""BOM: dpkg parsing, Debian version order, a deterministic SPDX document that spdx-tools accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from assembler import bom
from assembler.errors import ConfigError
from assembler.rootfs.downloads import Fetched
from tests.unit.bomdata import FACTS, STATUS, rootfs


def test_parse_status_keeps_installed_and_reads_source() -> None:
    packages = {p.name: p for p in bom.parse_status(STATUS.decode())}
    assert set(packages) == {"libc6", "hello"}
    assert (packages["libc6"].source, packages["libc6"].source_version) == ("glibc", "2.36-9+deb12u10")
    assert (packages["hello"].source, packages["hello"].source_version) == ("hello", "2.10-3")


def test_dpkg_db_from_tar_has_file_lists_and_os_release(tmp_path: Path) -> None:
    files = bom.read_tar_members(rootfs(tmp_path))
    db = bom.dpkg_db(files)
    assert db.files["hello"] == ["usr", "usr/bin", "usr/bin/hello"]  # "/." is the root: not a path
    assert db.files["libc6"] == ["lib/x86_64-linux-gnu/libc.so.6"]
    assert bom.os_release(files)["VERSION_ID"] == "12"


@pytest.mark.parametrize(("a", "b", "sign"), [
    ("1.30.1", "1.30.2", -1), ("1.30.10", "1.30.9", 1), ("2.10-3", "2.10-3", 0), ("1:0.9", "2.0", 1),
    ("1.0~rc1", "1.0", -1), ("2.36-9+deb12u10", "2.36-9+deb12u9", 1), ("1.0-1", "1.0-1.1", -1),
])
def test_compare_versions_follows_dpkg(a: str, b: str, sign: int) -> None:
    result = bom.compare_versions(a, b)
    assert (result > 0) - (result < 0) == sign


def _doc(tmp_path: Path) -> dict[str, object]:
    return bom.build_spdx(rootfs(tmp_path), **FACTS)


def test_spdx_document_validates_and_lists_everything(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    assert bom.validate_spdx(doc) == []
    assert doc["creationInfo"] == {"created": "2023-11-14T22:13:20Z", "creators": ["Tool: assembler-0.1.0"]}
    assert doc["documentNamespace"].endswith("demo-" + "ab" * 32)  # type: ignore[union-attr]
    packages = bom.deb_packages(doc)
    assert packages["libc6"] == {"version": "2.36-9+deb12u10", "architecture": "amd64", "source": "glibc",
                                 "source_version": "2.36-9+deb12u10"}
    assert bom.tools(doc)["mke2fs"].startswith("mke2fs 1.47.2")
    facts = bom.summary(doc)
    assert facts["downloads"][0] == {"url": "https://dl.k8s.io/v1.30.2/bin/linux/amd64/kubelet", "sha256": "23" * 32,
                                     "name": "kubelet"}
    assert facts["layers"][0]["step"].endswith("hello")
    purls = [r["referenceLocator"] for p in doc["packages"] for r in p.get("externalRefs", [])]  # type: ignore[union-attr]
    assert "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12&upstream=glibc%402.36-9%2Bdeb12u10" \
        in purls


def test_spdx_is_byte_identical_for_equal_inputs(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first, second = bom.document_bytes(_doc(tmp_path / "x")), bom.document_bytes(_doc(tmp_path / "y"))
    assert first == second


def test_embedded_files_and_release(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    files = bom.embedded_files(doc)
    assert set(files) == {"usr/share/assembler/bom.spdx.json", "usr/share/assembler/release"}
    release = bom.parse_release(files["usr/share/assembler/release"].decode())
    assert release["ASSEMBLER_IMAGE"] == "demo" and release["PACKAGES"] == "2"
    assert release["ROOTFS_SHA256"] == "ab" * 32


def test_validation_reports_a_broken_document(tmp_path: Path) -> None:
    doc = dict(_doc(tmp_path))
    doc["relationships"] = [*doc["relationships"], {"spdxElementId": "SPDXRef-Image",  # type: ignore[list-item]
                                                     "relationshipType": "CONTAINS",
                                                     "relatedSpdxElement": "SPDXRef-missing"}]
    assert bom.validate_spdx(doc)


def test_download_record_needs_url_and_checksum() -> None:
    with pytest.raises(ConfigError):
        Fetched.from_mapping({"url": "https://example.org/x"})
    pin = Fetched.from_mapping({"url": "https://e.org/a/kubeadm", "sha256": "sha256:" + "0" * 64})
    assert (pin.name, pin.sha256, pin.status) == ("kubeadm", "0" * 64, "fetched")
    record = Fetched("kubeadm", "https://e.org/a/kubeadm", "1" * 64, "downloads/kubeadm", "cached")
    assert Fetched.from_mapping(record.as_dict()) == record
