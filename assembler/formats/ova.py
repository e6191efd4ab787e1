"""vSphere OVA: an OVF 1.0 descriptor, a SHA256 manifest and a streamOptimized VMDK in a ustar archive.

The descriptor is the first member (vSphere reads it before the disk streams by), the image's versions are
OVF ProductSection properties (as image-builder does) and the archive is reproducible: fixed mtime,
numeric owner 0/0, fixed member order.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal
from xml.sax.saxutils import escape, quoteattr

from pydantic import Field

from assembler.errors import DiskError
from assembler.formats.base import MIB, BasePlugin, ConvertRequest, Options, allocated_bytes, round_up
from assembler.formats.qemu import VmdkOptions, normalize_vmdk_cid, stable_cid, vmdk_commands
from assembler.fsutil import sha256_file

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
NAMESPACES = {
    "xmlns": OVF_NS,
    "xmlns:ovf": OVF_NS,
    "xmlns:rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "xmlns:vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    "xmlns:vmw": "http://www.vmware.com/schema/ovf",
}
STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
USTAR_MAX = 8 * (1 << 30) - 1  # ustar's 11 octal digits


class OvaOptions(Options):
    cpus: int = Field(default=2, ge=1, le=128)
    memory_mib: int = Field(default=2048, ge=128)
    os_type: str = Field(default="debian11_64Guest", description="vSphere guest id (vmw:osType)")
    os_id: int = Field(default=96, description="CIM operating system id (96: Debian 64-bit)")
    firmware: Literal["bios", "efi"] = "bios"
    hardware_version: int = Field(default=13, ge=7, le=21, description="vmx-N: 13 = ESXi 6.5 and later")
    network: str = Field(default="nic0", min_length=1)
    manifest: bool = Field(default=True, description="add NAME.mf with the SHA256 of the OVF and disk")


@dataclass
class Node:
    """Just enough XML: the OVF needs both a default namespace and ovf:-prefixed attributes for the same
    URI, which ElementTree cannot write."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    text: str | None = None

    def render(self, depth: int = 0) -> list[str]:
        pad = "  " * depth
        attrs = "".join(f" {key}={quoteattr(value)}" for key, value in self.attrs.items())
        if self.text is not None:
            return [f"{pad}<{self.tag}{attrs}>{escape(self.text)}</{self.tag}>"]
        if not self.children:
            return [f"{pad}<{self.tag}{attrs}/>"]
        lines = [f"{pad}<{self.tag}{attrs}>"]
        for child in self.children:
            lines.extend(child.render(depth + 1))
        return [*lines, f"{pad}</{self.tag}>"]


def text(tag: str, value: object) -> Node:
    return Node(tag, text=str(value))


def item(rasd: dict[str, object], extra: list[Node] | None = None) -> Node:
    # CIM's schema is a sequence in alphabetical order; strict readers (ovftool) check it.
    children = [text(f"rasd:{key}", rasd[key]) for key in sorted(rasd)]
    return Node("Item", children=[*children, *(extra or [])])


def vmw_config(key: str, value: str) -> Node:
    return Node("vmw:Config", {"ovf:required": "false", "vmw:key": key, "vmw:value": value})


def property_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", key)


@dataclass(frozen=True)
class OvfDisk:
    href: str
    file_size: int
    capacity: int  # bytes, a whole number of MiB
    populated: int


def hardware(name: str, opts: OvaOptions) -> Node:
    system = Node("System", children=[
        text("vssd:ElementName", "Virtual Hardware Family"), text("vssd:InstanceID", 0),
        text("vssd:VirtualSystemIdentifier", name),
        text("vssd:VirtualSystemType", f"vmx-{opts.hardware_version}"),
    ])
    items = [
        item({"AllocationUnits": "hertz * 10^6", "Description": "Number of Virtual CPUs",
              "ElementName": f"{opts.cpus} virtual CPU(s)", "InstanceID": 1, "ResourceType": 3,
              "VirtualQuantity": opts.cpus}),
        item({"AllocationUnits": "byte * 2^20", "Description": "Memory Size",
              "ElementName": f"{opts.memory_mib}MB of memory", "InstanceID": 2, "ResourceType": 4,
              "VirtualQuantity": opts.memory_mib}),
        item({"Address": 0, "Description": "SCSI Controller", "ElementName": "SCSI controller 0",
              "InstanceID": 3, "ResourceSubType": "lsilogic", "ResourceType": 6}),
        item({"Address": 0, "Description": "IDE Controller", "ElementName": "IDE 0", "InstanceID": 4,
              "ResourceType": 5}),
        item({"AddressOnParent": 0, "ElementName": "Hard disk 1", "HostResource": "ovf:/disk/vmdisk1",
              "InstanceID": 5, "Parent": 3, "ResourceType": 17}),
        item({"AddressOnParent": 7, "AutomaticAllocation": "true", "Connection": opts.network,
              "Description": "VmxNet3 ethernet adapter", "ElementName": "Network adapter 1", "InstanceID": 6,
              "ResourceSubType": "VmxNet3", "ResourceType": 10}),
    ]
    return Node("VirtualHardwareSection", children=[
        text("Info", "Virtual hardware requirements"), system, *items, vmw_config("firmware", opts.firmware),
    ])


def product(name: str, properties: dict[str, str]) -> Node:
    props = [Node("Property", {"ovf:key": property_key(key), "ovf:type": "string",
                               "ovf:userConfigurable": "false", "ovf:value": properties[key]})
             for key in sorted(properties)]
    version = properties.get("version", "")
    return Node("ProductSection", children=[
        text("Info", "Information about the installed software"), text("Product", name),
        text("Version", version), text("FullVersion", version), *props,
    ])


def build_ovf(name: str, disk: OvfDisk, opts: OvaOptions, properties: dict[str, str]) -> str:
    """The OVF 1.0 descriptor for one VM with one streamOptimized disk."""
    envelope = Node("Envelope", dict(NAMESPACES), children=[
        Node("References", children=[
            Node("File", {"ovf:href": disk.href, "ovf:id": "file1", "ovf:size": str(disk.file_size)})]),
        Node("DiskSection", children=[text("Info", "Virtual disk information"), Node("Disk", {
            "ovf:capacity": str(disk.capacity // MIB), "ovf:capacityAllocationUnits": "byte * 2^20",
            "ovf:diskId": "vmdisk1", "ovf:fileRef": "file1", "ovf:format": STREAM_FORMAT,
            "ovf:populatedSize": str(disk.populated)})]),
        Node("NetworkSection", children=[text("Info", "The list of logical networks"),
                                         Node("Network", {"ovf:name": opts.network},
                                              [text("Description", "The VM network")])]),
        Node("VirtualSystem", {"ovf:id": name}, children=[
            text("Info", "A virtual machine"), text("Name", name),
            Node("OperatingSystemSection", {"ovf:id": str(opts.os_id), "vmw:osType": opts.os_type},
                 [text("Info", "The operating system installed")]),
            hardware(name, opts),
            product(name, properties),
        ]),
    ])
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', *envelope.render()]) + "\n"


def write_manifest(path: Path, files: list[Path]) -> None:
    path.write_text("".join(f"SHA256({f.name})= {sha256_file(f)}\n" for f in files))


def write_ova(dest: Path, members: list[Path], mtime: int) -> None:
    """A ustar archive of `members` in the given order (descriptor first), reproducible."""
    with tarfile.TarFile(dest, "w", format=tarfile.USTAR_FORMAT, copybufsize=1 << 20) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.size = member.stat().st_size
            if info.size > USTAR_MAX:
                raise DiskError(f"{member.name} is larger than ustar's 8 GiB member limit",
                                resolution="make the disk smaller or use the vmdk format directly")
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = mtime, 0o644, 0, 0, "", ""
            with member.open("rb") as handle:
                tar.addfile(info, handle)


class OvaFormat(BasePlugin):
    name = "ova"
    extension = ".ova"
    result_format = "vmdk"
    options_model: ClassVar[type[Options]] = OvaOptions

    def vmdk_path(self, req: ConvertRequest) -> Path:
        return req.work / f"{req.image_name}-disk1.vmdk"

    def commands(self, req: ConvertRequest) -> list[list[str]]:
        return vmdk_commands(req, VmdkOptions(), self.vmdk_path(req))

    def inner_disk(self, req: ConvertRequest) -> tuple[Path, str]:
        return self.vmdk_path(req), "vmdk"

    def finish(self, req: ConvertRequest) -> dict[str, Any]:
        opts = self.options
        assert isinstance(opts, OvaOptions)
        vmdk = self.vmdk_path(req)
        normalize_vmdk_cid(vmdk, stable_cid(req))
        populated = allocated_bytes(vmdk, "vmdk")
        disk = OvfDisk(vmdk.name, vmdk.stat().st_size, round_up(req.size(), MIB), populated)
        ovf = req.work / f"{req.image_name}.ovf"
        ovf.write_text(build_ovf(req.image_name, disk, opts, dict(req.properties)))
        members = [ovf]
        if opts.manifest:
            manifest = req.work / f"{req.image_name}.mf"
            write_manifest(manifest, [ovf, vmdk])
            members.append(manifest)
        write_ova(req.dest, [*members, vmdk], req.source_date_epoch)
        return {}
