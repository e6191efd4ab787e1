"""CycloneDX 1.6 from the BOM facts: valid for the reference library, the same things as the SPDX document."""

from __future__ import annotations

from pathlib import Path

from assembler import bom, cyclonedx
from tests.unit.bomdata import FACTS, rootfs, same_listing


def test_cyclonedx_validates_and_lists_what_spdx_lists(tmp_path: Path) -> None:
    facts = bom.bom_input(rootfs(tmp_path), **FACTS)
    doc = cyclonedx.cyclonedx_document(facts)
    assert cyclonedx.validate_cyclonedx(doc) == []
    same_listing(bom.spdx_document(facts), doc)
    libc = next(c for c in doc["components"] if c["name"] == "libc6")
    assert libc["purl"].startswith("pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12")
    assert libc["supplier"] == {"name": "GNU Libc Maintainers", "contact": [{"email": "debian-glibc@lists.debian.org"}]}
    assert doc["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    assert doc["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]


def test_cyclonedx_is_byte_identical_for_equal_inputs_and_tracks_the_rootfs(tmp_path: Path) -> None:
    for sub in "xyz":
        (tmp_path / sub).mkdir()
    first = cyclonedx.cyclonedx_document(bom.bom_input(rootfs(tmp_path / "x"), **FACTS))
    second = cyclonedx.cyclonedx_document(bom.bom_input(rootfs(tmp_path / "y"), **FACTS))
    assert bom.document_bytes(first) == bom.document_bytes(second)
    other = cyclonedx.cyclonedx_document(bom.bom_input(rootfs(tmp_path / "z"), **{**FACTS, "rootfs_sha256": "cd" * 32}))
    assert other["serialNumber"] != first["serialNumber"]


def test_invalid_cyclonedx_is_reported_with_its_path() -> None:
    doc = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
           "components": [{"type": "disk-image", "name": "x"}]}
    [message] = cyclonedx.validate_cyclonedx(doc)
    assert message.startswith("$.components[0].type: 'disk-image' is not one of")
