"""A small rootfs with a dpkg database and the facts a BOM states about it, for the BOM format tests."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from assembler import bom

STATUS = b"""Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc (2.36-9+deb12u10)
Version: 2.36-9+deb12u10
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Description: GNU C Library
 continuation line

Package: hello
Status: install ok installed
Architecture: amd64
Version: 2.10-3
Maintainer: Santiago Vila <sanvila@debian.org>
Homepage: https://www.gnu.org/software/hello/

Package: gone
Status: purge ok not-installed
Architecture: amd64
Version: 1.0
"""


def tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def rootfs(tmp_path: Path) -> Path:
    return tar(tmp_path / "rootfs.tar", {
        "usr/lib/os-release": b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
        "var/lib/dpkg/status": STATUS,
        "var/lib/dpkg/info/hello.list": b"/.\n/usr\n/usr/bin\n/usr/bin/hello\n",
        "var/lib/dpkg/info/libc6:amd64.list": b"/lib/x86_64-linux-gnu/libc.so.6\n",
        "usr/bin/hello": b"\x7fELF",
    }, {"etc/os-release": "../usr/lib/os-release"})


# What the build knows besides the tree: OCI image, base, layers, downloads, tools.
FACTS: dict[str, Any] = {
    "image": "demo", "rootfs_sha256": "ab" * 32, "source_date_epoch": 1_700_000_000,
    "oci": {"digest": "sha256:" + "cd" * 32, "layers": [{"digest": "sha256:" + "ef" * 32,
                                                         "step": "/bin/sh -c apt-get install hello"}]},
    "base_image": "sha256:" + "01" * 32,
    "downloads": [{"url": "https://dl.k8s.io/v1.30.2/bin/linux/amd64/kubelet", "sha256": "23" * 32,
                   "name": "kubelet", "dest": "downloads/kubelet", "status": "fetched"}],
    "tools": {"mke2fs": "mke2fs 1.47.2 (1-Jan-2025)", "qemu-img": "qemu-img version 7.2.15"},
}


def same_listing(spdx: Mapping[str, Any], cdx: Mapping[str, Any]) -> None:
    """The SPDX packages, split as CycloneDX splits them: subject, build tools, and every other component."""
    tool_ids = {r["spdxElementId"] for r in spdx["relationships"] if r["relationshipType"] == "BUILD_TOOL_OF"}
    subject = spdx["documentDescribes"][0] if "documentDescribes" in spdx else next(
        r["relatedSpdxElement"] for r in spdx["relationships"] if r["relationshipType"] == "DESCRIBES")
    by_id = {p["SPDXID"]: p for p in spdx["packages"]}

    def pairs(packages: list[Mapping[str, Any]], version: str) -> set[tuple[str, str]]:
        return {(p["name"], "" if p.get(version) in (None, bom.NOASSERTION) else p[version]) for p in packages}

    others = [p for i, p in by_id.items() if i not in tool_ids and i != subject]
    assert pairs(others, "versionInfo") == pairs(cdx["components"], "version")
    assert len(others) == len(cdx["components"])
    assert pairs([by_id[subject]], "versionInfo") == pairs([cdx["metadata"]["component"]], "version")
    spdx_tools = pairs([by_id[i] for i in tool_ids], "versionInfo")
    cdx_tools = pairs(cdx["metadata"]["tools"]["components"], "version")
    assert spdx_tools <= cdx_tools and {name for name, _ in cdx_tools - spdx_tools} <= {"assembler"}
    spdx_purls = {r["referenceLocator"] for p in spdx["packages"] for r in p.get("externalRefs", [])}
    assert spdx_purls == {c["purl"] for c in cdx["components"] if "purl" in c}
