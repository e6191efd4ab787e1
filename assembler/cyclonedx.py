"""Bill of materials as CycloneDX 1.6 JSON, from the same facts as the SPDX document (bom.BomInput).

Supply-chain tools read either format, so both are written beside the outputs from one set of facts and
must list the same things: the image is the BOM's subject (metadata.component), the tools that built the
disk are metadata.tools, and every other SPDX package (the OCI image, its base, each layer, each Debian
package, each download) is one component. Like the SPDX document it is a function of its inputs: the
timestamp is SOURCE_DATE_EPOCH, the serial number derives from the rootfs digest, lists are sorted.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from assembler import __version__
from assembler.bom import NAMESPACE, BomInput, DebPackage, iso_time, maintainer_parts, purl
from assembler.errors import ConfigError
from assembler.rootfs.layers import step_label

SPEC_VERSION = "1.6"
IMAGE_REF = "image"


def _hashes(value: str | None) -> list[dict[str, str]]:
    hexdigest = (value or "").removeprefix("sha256:")
    return [{"alg": "SHA-256", "content": hexdigest}] if re.fullmatch(r"[0-9a-f]{64}", hexdigest) else []


def _component(kind: str, ref: str, name: str, version: str | None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": kind, "bom-ref": ref, "name": name, "version": version}
    doc.update(extra)
    return {k: v for k, v in doc.items() if v not in (None, "", [], {})}


def _props(**values: str) -> list[dict[str, str]]:
    return [{"name": f"assembler:{k}", "value": v} for k, v in sorted(values.items()) if v]


def _supplier(maintainer: str) -> dict[str, Any]:
    name, email = maintainer_parts(maintainer)
    if not email:
        return {"name": name} if name else {}
    return {"name": name or email, "contact": [{"email": email}]} if "@" in email else {"name": name or email}


def _deb(package: DebPackage, distro: str, layer: int | None) -> dict[str, Any]:
    locator = purl(package, distro)
    return _component(
        "library", locator, package.name, package.version, purl=locator, supplier=_supplier(package.maintainer),
        externalReferences=[{"type": "website", "url": package.homepage}] if package.homepage else [],
        properties=_props(architecture=package.architecture, source=f"{package.source} {package.source_version}",
                          dpkg_status=package.status, layer="" if layer is None else str(layer)),
    )


def cyclonedx_document(bom: BomInput) -> dict[str, Any]:
    """The CycloneDX 1.6 document (JSON-ready, deterministic for equal inputs)."""
    distro = "-".join(p for p in (bom.os_release.get("ID", ""), bom.os_release.get("VERSION_ID", "")) if p)
    components: list[dict[str, Any]] = []
    if bom.oci_digest:
        components.append(_component("container", "oci-image", f"{bom.image} (OCI image)", bom.oci_digest,
                                     hashes=_hashes(bom.oci_digest)))
        if bom.base_image:
            components.append(_component("container", "base-image", "base image", bom.base_image,
                                         hashes=_hashes(bom.base_image)))
        for i, (diff_id, step) in enumerate(bom.layers):
            components.append(_component("file", f"layer-{i}", f"layer {i}: {step_label(step)[:80]}", diff_id,
                                         hashes=_hashes(diff_id), description=step or None))
    for name in sorted(bom.dpkg.packages):
        components.append(_deb(bom.dpkg.packages[name], distro, bom.package_layers.get(name)))
    used: set[str] = set()
    for download in sorted(bom.downloads, key=lambda d: (d.name, d.url)):
        ref = f"download:{download.name}"
        while ref in used:
            ref += "+"
        used.add(ref)
        where = [{"type": "distribution", "url": download.url}]
        components.append(_component("file", ref, download.name, None,  # pinned by checksum, not version
                                     hashes=_hashes(download.sha256), externalReferences=where))
    image = _component(
        "operating-system", IMAGE_REF, bom.image, f"sha256:{bom.rootfs_sha256}", hashes=_hashes(bom.rootfs_sha256),
        description="the flattened root filesystem (rootfs.tar) of the image; hash: the tar's sha256",
        properties=_props(os=bom.os_release.get("PRETTY_NAME", "")),
    )
    # The tools that built the disk; assembler itself (the document's creator, as in SPDX's creators) too.
    versions = {"assembler": __version__, **bom.tools}
    tools = [_component("application", f"tool:{name}", name, versions[name]) for name in sorted(versions)]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        # RFC 4122 name-based: the same rootfs gives the same serial, another rootfs another one.
        "serialNumber": uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE}/{bom.image}-{bom.rootfs_sha256}").urn,
        "version": 1,
        "metadata": {"timestamp": iso_time(bom.source_date_epoch), "tools": {"components": tools},
                     "component": image},
        "components": components,
        "dependencies": [{"ref": IMAGE_REF, "dependsOn": [c["bom-ref"] for c in components]}],
    }


def validate_cyclonedx(doc: Mapping[str, Any]) -> list[str]:
    """Messages of the reference library's strict schema validation (empty: valid CycloneDX 1.6)."""
    try:
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator
    except ImportError as exc:
        raise ConfigError("cyclonedx-python-lib is not installed", details=str(exc),
                          resolution="run `make setup` (pip install 'cyclonedx-python-lib[json-validation]')") from exc
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc))
    if error is None:
        return []
    # str(error) repeats the whole schema; the jsonschema error underneath says where and what.
    detail = error.data
    return [f"{getattr(detail, 'json_path', '$')}: {getattr(detail, 'message', str(detail).splitlines()[0])}"]
