"""Bill of materials: an SPDX 2.3 JSON document computed from the rootfs, its layers and the build's pins.

What goes in: the image (rootfs digest), the OCI image and its base, every layer (diff_id and the
Containerfile step), every installed Debian package (dpkg status: name, version, architecture, source),
every downloaded artefact ({url, sha256}) and the tools that built the disk. The document is a function
of its inputs: `created` is SOURCE_DATE_EPOCH, the namespace derives from the rootfs digest, all lists are
sorted, so two builds of the same tree give byte-identical BOMs. It is written beside the outputs and
embedded in the disk (/usr/share/assembler/bom.spdx.json plus a short key=value release file).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from debian.debian_support import version_compare

from assembler import __version__
from assembler.errors import ConfigError
from assembler.fsutil import atomic_path, sha256_bytes, tar_name
from assembler.rootfs.downloads import Fetched
from assembler.rootfs.layers import LayerIndex, Placed, merge, step_label

BOM_PATH = "usr/share/assembler/bom.spdx.json"
RELEASE_PATH = "usr/share/assembler/release"
STATUS = "var/lib/dpkg/status"
INFO_DIR = "var/lib/dpkg/info/"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
NAMESPACE = "https://spdx.org/spdxdocs/assembler"
NOASSERTION = "NOASSERTION"
# Bump when the document changes shape: the disk phase puts it in its cache key (the BOM is in the disk).
BOM_FORMAT = 2
# The document annotation that carries the build inputs (`assembler rebuild` reads it back).
INPUTS_PREFIX = "assembler-build-inputs: "
PARENT_ID = "SPDXRef-Parent-Image"


# --------------------------------------------------------------------------------------------- dpkg


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    source: str  # source package name (the binary's name when dpkg records none)
    source_version: str
    status: str  # the dpkg state word: installed, config-files, half-configured, ...
    maintainer: str = ""
    homepage: str = ""

    @property
    def key(self) -> str:
        return self.name


@dataclass
class DpkgDb:
    """What dpkg knows about a tree: packages by name and the paths each package owns."""

    packages: dict[str, DebPackage] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)  # package name -> paths (relative)

    def owner_map(self) -> dict[str, list[str]]:
        owners: dict[str, list[str]] = {}
        for name, paths in self.files.items():
            for path in paths:
                owners.setdefault(path, []).append(name)
        return owners


def wants_dpkg(path: str) -> bool:
    """The members a BOM needs from a tree: dpkg's status, its file lists and os-release."""
    return path == STATUS or path in OS_RELEASE or (path.startswith(INFO_DIR) and path.endswith(".list"))


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
        elif line[0] in " \t":
            if last:
                current[last] += "\n" + line
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key], last = value.strip(), key
    if current:
        stanzas.append(current)
    return stanzas


def parse_status(text: str) -> list[DebPackage]:
    """Packages dpkg-query -W lists: every stanza of the status file not in the not-installed state."""
    packages: list[DebPackage] = []
    for stanza in _stanzas(text):
        state = stanza.get("Status", "").split()
        if not stanza.get("Package") or not state or state[-1] == "not-installed":
            continue
        version = stanza.get("Version", "")
        source, source_version = stanza.get("Package", ""), version
        if match := re.match(r"^(\S+)(?:\s+\((\S+)\))?$", stanza.get("Source", "")):
            source, source_version = match.group(1), match.group(2) or version
        packages.append(DebPackage(
            name=stanza["Package"], version=version, architecture=stanza.get("Architecture", ""),
            source=source, source_version=source_version, status=state[-1],
            maintainer=stanza.get("Maintainer", ""), homepage=stanza.get("Homepage", ""),
        ))
    return sorted(packages, key=lambda p: (p.name, p.architecture))


def dpkg_db(files: Mapping[str, bytes]) -> DpkgDb:
    """Build the dpkg view from captured members (status, info/*.list), keyed by relative path."""
    status = files.get(STATUS)
    db = DpkgDb()
    if status is None:
        return db
    for package in parse_status(status.decode("utf-8", "replace")):
        db.packages[package.name] = package
    for path, data in files.items():
        if path.startswith(INFO_DIR) and path.endswith(".list"):
            name = path[len(INFO_DIR):-len(".list")].split(":", 1)[0]
            if name in db.packages:
                listed = [tar_name(line) for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
                db.files.setdefault(name, []).extend(p for p in listed if p)
    for paths in db.files.values():
        paths.sort()
    return db


def read_tar_members(tar_path: Path, want: Any = wants_dpkg) -> dict[str, bytes]:
    """The wanted regular members of a tar (headers are skipped over, only wanted data is read).

    Symlinks among the wanted paths (/etc/os-release) are resolved within the same tar.
    """
    found: dict[str, bytes] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(tar_path, mode="r:") as tf:
            for member in tf:
                path = tar_name(member.name)
                if not want(path):
                    continue
                if member.isreg():
                    handle = tf.extractfile(member)
                    found[path] = handle.read() if handle else b""
                elif member.issym():
                    links[path] = link_target(path, member.linkname)
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"cannot read the rootfs tar {tar_path}", details=str(exc),
                          resolution="pass an uncompressed tar (the rootfs phase output)") from exc
    return with_links(found, links)


def link_target(path: str, linkname: str) -> str:
    """Where a symlink member points, as a tar name (relative targets resolved against its directory)."""
    return tar_name(str(Path(path).parent / linkname))


def with_links(found: dict[str, bytes], links: Mapping[str, str]) -> dict[str, bytes]:
    """Wanted symlinks (/etc/os-release) read as the wanted file they point at within the same tar."""
    for path, target in links.items():
        if target in found:
            found[path] = found[target]
    return found


def os_release(files: Mapping[str, bytes]) -> dict[str, str]:
    data = next((files[p] for p in OS_RELEASE if p in files), b"")
    result: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            result[key.strip()] = value.strip().strip('"')
    return result


# ---------------------------------------------------------------------------------- debian versions


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 in dpkg's order (epoch, upstream, revision; ~ first), as python-debian implements it; a
    string that is no version at all (an empty one) compares as text."""
    try:
        return int(version_compare(a, b))
    except ValueError:
        return (a > b) - (a < b)


# ------------------------------------------------------------------------------------------ SPDX


def iso_time(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spdx_id(kind: str, *parts: str) -> str:
    return "SPDXRef-" + "-".join([kind, *(re.sub(r"[^A-Za-z0-9.]+", "-", p).strip("-") for p in parts)])


def maintainer_parts(maintainer: str) -> tuple[str, str]:
    """(name, email) of a Debian Maintainer field ("Name <email>"); ("text", "") when it has no address."""
    match = re.match(r"^\s*(.*?)\s*<([^>]*)>\s*$", maintainer)
    return (match.group(1), match.group(2)) if match else (maintainer.strip(), "")


def _supplier(maintainer: str) -> str:
    name, email = maintainer_parts(maintainer)
    if not email:
        return f"Organization: {name}" if name else NOASSERTION
    name = name.replace("(", "[").replace(")", "]")
    return f"Organization: {name} ({email})" if name else NOASSERTION


def purl(package: DebPackage, distro: str) -> str:
    quals = [f"arch={package.architecture}"]
    if distro:
        quals.append(f"distro={distro}")
    if package.source != package.name or package.source_version != package.version:
        quals.append("upstream=" + quote(f"{package.source}@{package.source_version}", safe=""))
    return f"pkg:deb/debian/{quote(package.name, safe='')}@{quote(package.version, safe='')}?{'&'.join(quals)}"


def _package(spdx_id: str, name: str, version: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"SPDXID": spdx_id, "name": name, "versionInfo": version,
                           "downloadLocation": NOASSERTION, "filesAnalyzed": False,
                           "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
                           "copyrightText": NOASSERTION}
    doc.update({k: v for k, v in extra.items() if v not in (None, "", [])})
    return doc


def _sha256(value: str) -> list[dict[str, str]]:
    hexdigest = value.removeprefix("sha256:")
    return [{"algorithm": "SHA256", "checksumValue": hexdigest}] if re.fullmatch(r"[0-9a-f]{64}", hexdigest) else []


@dataclass(frozen=True)
class ParentFacts:
    """The image of ours this one starts FROM (assembler/NAME): its identity and how many layers are its."""

    image: str
    rootfs_sha256: str
    layers: int  # the bottom `layers` of this image's layers are the parent's (its base's included)
    oci_digest: str | None = None  # the engine's image ID (left out of the copy embedded in the disk)

    def summary(self) -> dict[str, Any]:
        return {"image": self.image, "rootfs_sha256": self.rootfs_sha256, "layers": self.layers,
                "oci_digest": self.oci_digest}


@dataclass(frozen=True)
class BomInput:
    """Everything the BOM states, gathered by the caller (the build, `inspect` or a test)."""

    image: str
    rootfs_sha256: str
    source_date_epoch: int
    dpkg: DpkgDb
    os_release: dict[str, str] = field(default_factory=dict)
    oci_digest: str | None = None
    base_image: str | None = None
    layers: tuple[tuple[str, str], ...] = ()  # (diff_id, step) bottom first
    package_layers: dict[str, int] = field(default_factory=dict)  # package -> layer that installed it
    downloads: tuple[Fetched, ...] = ()  # what the build fetched and put in the image
    tools: dict[str, str] = field(default_factory=dict)
    build_inputs: Mapping[str, Any] | None = None  # what recreates the image (assembler.inputs)
    parent: ParentFacts | None = None


def package_layers(index: LayerIndex, dpkg: DpkgDb, tree: Mapping[str, Placed] | None = None) -> dict[str, int]:
    """The layer that last wrote each package's file list: the step that installed (or upgraded) it."""
    placed = tree if tree is not None else merge(index)
    found: dict[str, int] = {}
    for name, package in dpkg.packages.items():
        for path in (f"{INFO_DIR}{name}.list", f"{INFO_DIR}{name}:{package.architecture}.list"):
            if path in placed:
                found[name] = placed[path].layer
                break
    return found


def spdx_document(bom: BomInput) -> dict[str, Any]:
    """The SPDX 2.3 document (a JSON-ready dict, deterministic for equal inputs)."""
    distro = "-".join(x for x in (bom.os_release.get("ID", ""), bom.os_release.get("VERSION_ID", "")) if x)
    image_id = "SPDXRef-Image"
    packages: list[dict[str, Any]] = [_package(
        image_id, bom.image, f"sha256:{bom.rootfs_sha256}", checksums=_sha256(bom.rootfs_sha256),
        primaryPackagePurpose="OPERATING-SYSTEM", supplier=NOASSERTION,
        description=bom.os_release.get("PRETTY_NAME", ""),
        comment="the flattened root filesystem (rootfs.tar) of the image; checksum: the tar's sha256",
    )]
    relationships = [_rel("SPDXRef-DOCUMENT", "DESCRIBES", image_id)]
    parent = bom.parent
    if parent is not None:
        packages.append(_package(
            PARENT_ID, parent.image, f"sha256:{parent.rootfs_sha256}", checksums=_sha256(parent.rootfs_sha256),
            primaryPackagePurpose="OPERATING-SYSTEM", supplier=NOASSERTION,
            comment=f"the image of ours this one starts FROM (assembler/{parent.image}); its bottom "
                    f"{parent.layers} layer(s) are this image's; checksum: its rootfs tar's sha256"))
        relationships.append(_rel(image_id, "DESCENDANT_OF", PARENT_ID))
    if bom.oci_digest:
        packages.append(_package("SPDXRef-OCI-Image", f"{bom.image} (OCI image)", bom.oci_digest,
                                 checksums=_sha256(bom.oci_digest), primaryPackagePurpose="CONTAINER",
                                 comment="image config digest as built by the container engine"))
        relationships.append(_rel(image_id, "GENERATED_FROM", "SPDXRef-OCI-Image"))
        if bom.base_image:
            packages.append(_package("SPDXRef-Base-Image", "base image", bom.base_image,
                                     checksums=_sha256(bom.base_image), primaryPackagePurpose="CONTAINER"))
            relationships.append(_rel("SPDXRef-OCI-Image", "DESCENDANT_OF", "SPDXRef-Base-Image"))
        for i, (diff_id, step) in enumerate(bom.layers):
            inherited = parent is not None and i < parent.layers
            origin = f" ({parent.image})" if parent is not None and inherited else ""
            packages.append(_package(f"SPDXRef-Layer-{i}", f"layer {i}{origin}: {step_label(step)[:80]}", diff_id,
                                     checksums=_sha256(diff_id), primaryPackagePurpose="ARCHIVE",
                                     comment=f"step: {step}"))
            relationships.append(_rel("SPDXRef-OCI-Image", "CONTAINS", f"SPDXRef-Layer-{i}"))
            if inherited:
                relationships.append(_rel(PARENT_ID, "CONTAINS", f"SPDXRef-Layer-{i}"))
    used: set[str] = set()
    for name in sorted(bom.dpkg.packages):
        package = bom.dpkg.packages[name]
        spdx_id = _unique(_spdx_id("deb", package.name, package.architecture), used)
        packages.append(_package(
            spdx_id, package.name, package.version, supplier=_supplier(package.maintainer),
            homepage=package.homepage if package.homepage.startswith(("http://", "https://")) else None,
            sourceInfo=f"built from Debian source package {package.source} {package.source_version}",
            summary=f"dpkg status: {package.status}; architecture: {package.architecture}",
            externalRefs=[{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                           "referenceLocator": purl(package, distro)}],
        ))
        relationships.append(_rel(image_id, "CONTAINS", spdx_id))
        if bom.oci_digest and name in bom.package_layers:
            relationships.append(_rel(f"SPDXRef-Layer-{bom.package_layers[name]}", "CONTAINS", spdx_id))
    for download in sorted(bom.downloads, key=lambda d: (d.name, d.url)):
        spdx_id = _unique(_spdx_id("Download", download.name), used)
        packages.append(_package(spdx_id, download.name, NOASSERTION,  # a pin is a checksum, not a version
                                 checksums=_sha256(download.sha256), primaryPackagePurpose="FILE")
                        | {"downloadLocation": download.url})
        relationships.append(_rel(image_id, "CONTAINS", spdx_id))
    for tool in sorted(bom.tools):
        spdx_id = _unique(_spdx_id("Tool", tool), used)
        packages.append(_package(spdx_id, tool, bom.tools[tool] or NOASSERTION, primaryPackagePurpose="APPLICATION"))
        relationships.append(_rel(spdx_id, "BUILD_TOOL_OF", image_id))
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{bom.image}-sbom",
        "documentNamespace": f"{NAMESPACE}/{bom.image}-{bom.rootfs_sha256}",
        "creationInfo": {"created": iso_time(bom.source_date_epoch),
                         "creators": [f"Tool: assembler-{__version__}"]},
        "comment": "assembler: " + json.dumps(_summary(bom), sort_keys=True),
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    }
    if bom.build_inputs is not None:
        doc["annotations"] = [_inputs_annotation(bom.build_inputs, bom.source_date_epoch)]
    return doc


def _inputs_annotation(inputs: Mapping[str, Any], epoch: int) -> dict[str, str]:
    # SPDX 2.3 has no field for a build recipe; a document-level annotation is valid SPDX and keeps the
    # inputs next to what they produced. Dated by SOURCE_DATE_EPOCH so the document stays reproducible.
    return {"annotationDate": iso_time(epoch), "annotationType": "OTHER",
            "annotator": f"Tool: assembler-{__version__}",
            "comment": INPUTS_PREFIX + json.dumps(inputs, sort_keys=True, ensure_ascii=False)}


def build_inputs_of(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The build inputs embedded by build_spdx(build_inputs=...), or None when the document has none."""
    for annotation in doc.get("annotations", []):
        comment = str(annotation.get("comment", ""))
        if comment.startswith(INPUTS_PREFIX):
            try:
                data = json.loads(comment[len(INPUTS_PREFIX):])
            except ValueError as exc:
                raise ConfigError("the BOM's build-inputs annotation is not valid JSON", details=str(exc),
                                  resolution="regenerate the BOM with `assembler build`") from exc
            return data if isinstance(data, dict) else None
    return None


def _summary(bom: BomInput) -> dict[str, Any]:
    """Machine-readable facts about the build that SPDX has no field for (read back by inspect/diff)."""
    return {"image": bom.image, "rootfs_sha256": bom.rootfs_sha256, "source_date_epoch": bom.source_date_epoch,
            "oci_digest": bom.oci_digest, "base_image": bom.base_image,
            "layers": [{"digest": d, "step": s} for d, s in bom.layers],
            **({"parent": bom.parent.summary()} if bom.parent is not None else {}),
            "downloads": [{"url": d.url, "sha256": d.sha256, "name": d.name}
                          for d in sorted(bom.downloads, key=lambda d: (d.name, d.url))]}


def _unique(spdx_id: str, used: set[str]) -> str:
    candidate, n = spdx_id, 1
    while candidate in used:
        n += 1
        candidate = f"{spdx_id}-{n}"
    used.add(candidate)
    return candidate


def _rel(a: str, kind: str, b: str) -> dict[str, str]:
    return {"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b}


# ---------------------------------------------------------------------------------- gathering


def bom_input(rootfs_tar: Path, *, image: str, rootfs_sha256: str, source_date_epoch: int,
              oci: Mapping[str, Any] | None = None, base_image: str | None = None,
              layers_index: LayerIndex | None = None, downloads: Sequence[Mapping[str, Any]] = (),
              tools: Mapping[str, str] | None = None,
              build_inputs: Mapping[str, Any] | None = None,
              files: Mapping[str, bytes] | None = None, parent: ParentFacts | None = None) -> BomInput:
    """Gather the BOM's facts: dpkg and os-release from the rootfs tar, layers from the rootfs metadata.

    `files`: the tar's wanted members (read_tar_members) when the caller has read them already."""
    files = read_tar_members(rootfs_tar) if files is None else files
    dpkg = dpkg_db(files)
    layers = tuple((str(x["digest"]), str(x["step"])) for x in (oci or {}).get("layers", []))
    return BomInput(
        image=image, rootfs_sha256=rootfs_sha256, source_date_epoch=source_date_epoch, dpkg=dpkg,
        os_release=os_release(files), oci_digest=(oci or {}).get("digest"), base_image=base_image,
        layers=layers, package_layers=package_layers(layers_index, dpkg) if layers_index else {},
        downloads=tuple(Fetched.from_mapping(d) for d in downloads), tools=dict(tools or {}),
        build_inputs=build_inputs, parent=parent,
    )


def build_spdx(rootfs_tar: Path, **kwargs: Any) -> dict[str, Any]:
    """bom_input() + spdx_document(): the SPDX document for a built rootfs (see bom_input for kwargs)."""
    return spdx_document(bom_input(rootfs_tar, **kwargs))


def document_bytes(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_document(doc: Mapping[str, Any], dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(document_bytes(doc))
    dest.chmod(0o644)
    return dest


def release_text(doc: Mapping[str, Any]) -> str:
    """A short key=value file (shell-sourceable, like os-release) naming the build and its BOM."""
    facts = summary(doc)
    deb = [p for p in doc.get("packages", []) if str(p.get("SPDXID", "")).startswith("SPDXRef-deb-")]
    lines = {
        "ASSEMBLER_IMAGE": facts.get("image", ""),
        "ASSEMBLER_VERSION": __version__,
        "SOURCE_DATE_EPOCH": facts.get("source_date_epoch", ""),
        "ROOTFS_SHA256": facts.get("rootfs_sha256", ""),
        "OCI_DIGEST": facts.get("oci_digest") or "",
        "BASE_IMAGE": facts.get("base_image") or "",
        "LAYERS": len(facts.get("layers", [])),
        "PACKAGES": len(deb),
        "BOM": "/" + BOM_PATH,
        "BOM_SHA256": sha256_bytes(document_bytes(doc)),
    }
    return "".join(f'{k}="{v}"\n' for k, v in lines.items())


def embedded_files(doc: Mapping[str, Any]) -> dict[str, bytes]:
    """The files to add to the disk's root filesystem (paths relative to /)."""
    return {BOM_PATH: document_bytes(doc), RELEASE_PATH: release_text(doc).encode()}


def summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The assembler facts stored in the document's comment (empty for foreign SPDX documents)."""
    comment = str(doc.get("comment", ""))
    if not comment.startswith("assembler: "):
        return {}
    try:
        data = json.loads(comment[len("assembler: "):])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def parse_release(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key.strip()] = value.strip().strip('"')
    return result


# ------------------------------------------------------------------------------------ reading back


def release_of(doc: Mapping[str, Any]) -> dict[str, str]:
    """os-release's ID and VERSION_ID as the package URLs record them (`distro=debian-12`); {} without."""
    for package in doc.get("packages", []):
        for ref in package.get("externalRefs", []) if isinstance(package, Mapping) else []:
            locator = str(ref.get("referenceLocator", ""))
            found = re.search(r"[?&]distro=([a-z0-9.+~-]+?)-([0-9][0-9.]*)(?:&|$)", locator)
            if found:
                return {"ID": found.group(1), "VERSION_ID": found.group(2)}
    return {}


def package_list(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """deb_packages as a list sorted by name, each with its name (what inspect reports and scan reads)."""
    return [{"name": name, **facts} for name, facts in sorted(deb_packages(doc).items())]


def deb_packages(doc: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """name -> {version, architecture, source} of the Debian packages an SPDX document lists."""
    result: dict[str, dict[str, str]] = {}
    for package in doc.get("packages", []):
        if not str(package.get("SPDXID", "")).startswith("SPDXRef-deb-"):
            continue
        ref = next((r["referenceLocator"] for r in package.get("externalRefs", [])
                    if r.get("referenceType") == "purl"), "")
        arch = re.search(r"[?&]arch=([^&]+)", ref)
        source = re.match(r"built from Debian source package (\S+) (\S+)", package.get("sourceInfo", ""))
        result[package["name"]] = {
            "version": package.get("versionInfo", ""), "architecture": arch.group(1) if arch else "",
            "source": source.group(1) if source else package["name"],
            "source_version": source.group(2) if source else package.get("versionInfo", ""),
        }
    return result


def tools(doc: Mapping[str, Any]) -> dict[str, str]:
    return {p["name"]: p.get("versionInfo", "") for p in doc.get("packages", [])
            if str(p.get("SPDXID", "")).startswith("SPDXRef-Tool-")}


def load_spdx(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the SPDX document {path}", details=str(exc),
                          resolution="pass an SPDX 2.3 JSON file (out/IMAGE/IMAGE.spdx.json)") from exc
    if not isinstance(data, dict) or data.get("spdxVersion", "").startswith("SPDX-") is False:
        raise ConfigError(f"{path} is not an SPDX JSON document", resolution="pass IMAGE.spdx.json")
    return data


def validate_spdx(doc: Mapping[str, Any]) -> list[str]:
    """Messages of spdx-tools' full validation (empty: the document is valid SPDX 2.3)."""
    try:
        from spdx_tools.spdx.parser.error import SPDXParsingError
        from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
        from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    except ImportError as exc:
        raise ConfigError("spdx-tools is not installed", details=str(exc),
                          resolution="run `make setup` (pip install spdx-tools)") from exc
    try:
        document = JsonLikeDictParser().parse(json.loads(json.dumps(doc)))  # type: ignore[no-untyped-call]
    except SPDXParsingError as exc:
        return [f"parse: {m}" for m in exc.get_messages()]  # type: ignore[no-untyped-call]
    return [m.validation_message for m in validate_full_spdx_document(document)]
