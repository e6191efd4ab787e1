"""Measured boot: the PCR 4 and PCR 7 values a Secure Boot disk will give on its first boot, and the check.

The boot chain is OVMF (edk2 Tcg2Dxe) -> Debian's signed shim (EFI/BOOT/BOOTX64.EFI) -> Debian's signed grub
(EFI/BOOT/grubx64.efi) -> Debian's signed kernel. PCR 4 holds the Authenticode hashes of those three images
after the firmware's ready-to-boot action and separator; PCR 7 holds the Secure Boot policy (the variables,
read from the OVMF variable store the guest starts with) and the authorities that verified each image. The
sequences follow edk2-stable202211 (Tcg2Dxe, DxeImageVerificationLib) and shim 16.1 (mok.c, tpm.c, sbat.c).

Everything here is a pure function of bytes: the PE images, the variable store and, for the check, the
guest's TCG event log (treated as untrusted: every length is bounded before it is used).
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pefile
from pydantic import BaseModel, ConfigDict, ValidationError

from assembler.errors import BootError, ConfigError, DiskError

PREDICTION_FORMAT = 1
# The variable store the prediction is for: Debian ovmf's, with Microsoft's keys enrolled (what `assembler boot
# --firmware uefi-secureboot` starts every run from).
SECURE_BOOT_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")

EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_ACTION = 0x80000007
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EVENT_NAMES = {
    0x00000000: "EV_PREBOOT_CERT", 0x00000001: "EV_POST_CODE", 0x00000003: "EV_NO_ACTION",
    0x00000004: "EV_SEPARATOR", 0x00000005: "EV_ACTION", 0x00000006: "EV_EVENT_TAG",
    0x00000007: "EV_S_CRTM_CONTENTS", 0x00000008: "EV_S_CRTM_VERSION", 0x00000009: "EV_CPU_MICROCODE",
    0x0000000A: "EV_PLATFORM_CONFIG_FLAGS", 0x0000000B: "EV_TABLE_OF_DEVICES", 0x0000000C: "EV_COMPACT_HASH",
    0x0000000D: "EV_IPL", 0x0000000E: "EV_IPL_PARTITION_DATA", 0x0000000F: "EV_NONHOST_CODE",
    0x00000010: "EV_NONHOST_CONFIG", 0x00000011: "EV_NONHOST_INFO", 0x00000012: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG", 0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION", 0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER", 0x80000006: "EV_EFI_GPT_EVENT", 0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB", 0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2", 0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2", 0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY", 0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

GLOBAL_GUID = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
SECURITY_DB_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
SHIM_LOCK_GUID = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
SECURE_BOOT_ENABLE_GUID = uuid.UUID("f0a30bc7-af08-4556-99c4-001009c93a44")
CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
NV_DATA_FV_GUID = uuid.UUID("fff12b8d-7696-4c8b-a985-2747075b4f50")
AUTH_VARSTORE_GUIDS = {uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792"),  # gEfiAuthenticatedVariableGuid
                       uuid.UUID("515fa686-b06e-4550-9112-382bf1067bfb")}  # gEfiVariableGuid with time auth
PLAIN_VARSTORE_GUID = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")

CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
SEPARATOR_DATA = b"\x00\x00\x00\x00"
SBAT_VAR_ORIGINAL = b"sbat,1,2021030218\n"
VAR_ATTR_NV_BS = 0x3

# Bounds for untrusted input: real logs are tens of KiB, real variable stores a few MiB.
MAX_LOG_BYTES = 16 << 20
MAX_LOG_EVENTS = 100_000
MAX_EVENT_DATA = 4 << 20
MAX_DIGESTS = 16
MAX_VARSTORE_BYTES = 64 << 20

# What the prediction takes for granted about the boot it describes (the boot test should set it up so).
ASSUMPTIONS = (
    "the disk is the first boot option that is tried (one ready-to-boot, no failed PXE/other attempt before it)",
    "no fbx64.efi beside EFI/BOOT/BOOTX64.EFI (shim would run fallback instead of grub)",
    "no option ROM or driver verified by a db entry other than the one that verifies shim",
    "no MOK variables, SbatPolicy or revocations.efi beyond what the variable store holds",
    "grub before 2.12 has shim verify the kernel and then start it (two PCR 4 measurements of the kernel, as "
    "Debian 12's grub 2.06 does); grub 2.12 starts it through shim's loader only (one, as Debian 13's does)",
)


class ExpectedEvent(BaseModel):
    """One event the boot should log: where, what kind, its sha256 digest and who measures what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pcr: int
    event_type: int
    type_name: str
    sha256: str
    description: str


class Prediction(BaseModel):
    """IMAGE.pcrs.json: the sha256 PCR values and, per PCR in order, the events that make them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = PREDICTION_FORMAT
    pcrs: dict[int, str]  # PCR index -> lowercase hex sha256 bank value
    events: list[ExpectedEvent]
    inputs: dict[str, str]  # shim/grub/kernel Authenticode sha256, the variable store's file sha256
    uncertain: list[str]  # parts that could not be derived exactly (empty when the prediction is exact)
    assumptions: list[str]


def load_prediction(path: Path) -> Prediction:
    """Read IMAGE.pcrs.json: a file from elsewhere, so validated, and one clear error when it is not one."""
    try:
        return Prediction.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the PCR prediction {path}: {exc.strerror}",
                          resolution="pass the IMAGE.pcrs.json the disk phase wrote (--pcrs)") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a PCR prediction", details=str(exc)[:1000],
                          resolution="pass the IMAGE.pcrs.json the disk phase wrote, or rebuild the disk") from exc


class LogEvent(BaseModel):
    """One TCG_PCR_EVENT2 record of a crypto-agile event log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pcr: int
    event_type: int
    sha256: str | None  # None when the record carries no sha256 digest
    data: bytes

    @property
    def type_name(self) -> str:
        return type_name(self.event_type)

    @property
    def description(self) -> str:
        return describe(self.event_type, self.data)


class UefiVariable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    guid: uuid.UUID
    attributes: int
    data: bytes


def type_name(event_type: int) -> str:
    return EVENT_NAMES.get(event_type, f"0x{event_type:08x}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 4], "little")


# ------------------------------------------------------------------------------------------------ PE


def _bad_pe(what: str, details: str) -> DiskError:
    return DiskError(f"not a usable PE image: {what}", details=details,
                     resolution="check that the file is the signed EFI binary from its package, not truncated")


def _parse_pe(data: bytes, what: str) -> pefile.PE:
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except (pefile.PEFormatError, struct.error, ValueError, IndexError) as exc:
        raise _bad_pe(what, str(exc)) from exc
    if not hasattr(pe, "OPTIONAL_HEADER") or pe.OPTIONAL_HEADER is None:
        raise _bad_pe(what, "no optional header")
    return pe


def _security_dir(pe: pefile.PE) -> tuple[int, int, int] | None:
    """(entry file offset, certificate table offset, size) of the Certificate Table directory, if it has one."""
    if pe.OPTIONAL_HEADER.NumberOfRvaAndSizes <= 4 or len(pe.OPTIONAL_HEADER.DATA_DIRECTORY) <= 4:
        return None
    entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4]
    return int(entry.get_file_offset()), int(entry.VirtualAddress), int(entry.Size)


def authenticode_sha256(data: bytes, what: str = "image") -> str:
    """The PE Authenticode sha256, computed the way edk2 measures images (Tcg2Dxe, MeasurePeImageAndExtend).

    Hashed: the headers without CheckSum and the Certificate Table entry, the sections' raw data in file
    order, then whatever follows them except the certificate table's size (edk2 and pesign both assume the
    table is last, as signing tools put it).
    """
    pe = _parse_pe(data, what)
    size = len(data)
    header_size = int(pe.OPTIONAL_HEADER.SizeOfHeaders)
    checksum = int(pe.OPTIONAL_HEADER.get_field_absolute_offset("CheckSum"))
    if not checksum + 4 <= header_size <= size:
        raise _bad_pe(what, f"SizeOfHeaders {header_size} does not cover the optional header or exceeds the file")
    digest = hashlib.sha256(data[:checksum])
    security = _security_dir(pe)
    cert_size = 0
    if security is None:
        digest.update(data[checksum + 4:header_size])
    else:
        entry, _, cert_size = security
        if not (checksum + 4 <= entry and entry + 8 <= header_size):
            raise _bad_pe(what, "the Certificate Table entry lies outside the headers")
        digest.update(data[checksum + 4:entry])
        digest.update(data[entry + 8:header_size])
    hashed = header_size
    sections = sorted((s for s in pe.sections if s.SizeOfRawData), key=lambda s: int(s.PointerToRawData))
    for section in sections:
        start, length = int(section.PointerToRawData), int(section.SizeOfRawData)
        if start + length > size:
            raise _bad_pe(what, f"section {section.Name!r} runs past the end of the file ({start}+{length} > {size})")
        digest.update(data[start:start + length])
        hashed += length
    if size > hashed:
        if size < hashed + cert_size:
            raise _bad_pe(what, "the certificate table is larger than the data after the sections")
        digest.update(data[hashed:size - cert_size])
    return digest.hexdigest()


def _signature_blobs(data: bytes, what: str) -> list[bytes]:
    """The PKCS#7 SignedData blobs of the image's WIN_CERTIFICATE entries (empty when it is unsigned)."""
    pe = _parse_pe(data, what)
    security = _security_dir(pe)
    if security is None or not security[2]:
        return []
    _, start, length = security
    if start + length > len(data):
        raise _bad_pe(what, "the certificate table runs past the end of the file")
    blobs, pos = [], 0
    while pos + 8 <= length:
        cert_len = _u32(data, start + pos)
        if cert_len < 8 or pos + cert_len > length:
            raise _bad_pe(what, f"WIN_CERTIFICATE at {pos} has a bad length {cert_len}")
        if int.from_bytes(data[start + pos + 6:start + pos + 8], "little") == 0x0002:  # PKCS_SIGNED_DATA
            blobs.append(data[start + pos + 8:start + pos + cert_len])
        pos += (cert_len + 7) & ~7
    return blobs


def _section_data(data: bytes, name: str, what: str) -> bytes | None:
    """A section's raw data by name; long names ("/4") resolve through the COFF string table."""
    pe = _parse_pe(data, what)
    strings = int(pe.FILE_HEADER.PointerToSymbolTable) + 18 * int(pe.FILE_HEADER.NumberOfSymbols)
    for section in pe.sections:
        raw = bytes(section.Name).rstrip(b"\0")
        if raw.startswith(b"/") and raw[1:].isdigit() and pe.FILE_HEADER.PointerToSymbolTable:
            at = strings + int(raw[1:])
            end = data.find(b"\0", at, at + 256)
            raw = data[at:end] if end >= 0 else b""
        if raw == name.encode():
            start, length = int(section.PointerToRawData), int(section.SizeOfRawData)
            if start + length > len(data):
                raise _bad_pe(what, f"section {name} runs past the end of the file")
            return data[start:start + min(length, int(section.Misc_VirtualSize) or length)]
    return None


# ----------------------------------------------------------------------------------------------- DER


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at pos; ValueError when it does not fit."""
    if pos + 2 > end:
        raise ValueError("truncated DER")
    tag, length = buf[pos], buf[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or pos + count > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise ValueError("DER element runs past its container")
    return tag, pos, pos + length


def cert_subject(der: bytes) -> bytes:
    """The DER subject Name of an X.509 certificate (ValueError when it is not one)."""
    _, start, end = _tlv(der, 0, len(der))
    _, pos, tbs_end = _tlv(der, start, end)
    fields: list[tuple[int, int, int]] = []
    while pos < tbs_end and len(fields) < 7:
        tag, _, stop = _tlv(der, pos, tbs_end)
        fields.append((tag, pos, stop))
        pos = stop
    if fields and fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    if len(fields) < 5 or fields[4][0] != 0x30:
        raise ValueError("not an X.509 certificate")
    return der[fields[4][1]:fields[4][2]]


def common_name(der: bytes) -> str:
    """The certificate's subject CN, for messages; "" when there is none."""
    try:
        subject = cert_subject(der)
        at = subject.find(b"\x06\x03\x55\x04\x03")
        if at < 0:
            return ""
        _, start, end = _tlv(subject, at + 5, len(subject))
        return subject[start:end].decode("utf-8", "replace")
    except ValueError:
        return ""


def _anchors(cert: bytes, blobs: Sequence[bytes]) -> bool:
    """Whether a signature chains to cert: its subject names an issuer (or it is itself) in a PKCS#7 blob.

    No cryptography here: this picks which trusted certificate the verifier will have used, from names.
    """
    try:
        subject = cert_subject(cert)
    except ValueError:
        return False
    return any(subject in blob or cert in blob for blob in blobs)


# ------------------------------------------------------------------------------------- variable store


def _bad_vars(details: str) -> DiskError:
    return DiskError("the OVMF variable store cannot be read", details=details,
                     resolution="use an OVMF_VARS*.fd from the ovmf package (or a copy the firmware wrote)")


def parse_varstore(data: bytes) -> list[UefiVariable]:
    """The live variables of an OVMF variable file (EFI firmware volume holding a variable store)."""
    if len(data) > MAX_VARSTORE_BYTES:
        raise _bad_vars(f"{len(data)} bytes is more than any variable store")
    if len(data) < 0x48 + 28 or data[40:44] != b"_FVH":
        raise _bad_vars("no firmware volume header (_FVH)")
    if uuid.UUID(bytes_le=data[16:32]) != NV_DATA_FV_GUID:
        raise _bad_vars("the firmware volume is not an NV data volume")
    store = int.from_bytes(data[48:50], "little")
    if store + 28 > len(data):
        raise _bad_vars("the variable store header lies past the end of the file")
    kind = uuid.UUID(bytes_le=data[store:store + 16])
    if kind in AUTH_VARSTORE_GUIDS:
        header = 60
    elif kind == PLAIN_VARSTORE_GUID:
        header = 32
    else:
        raise _bad_vars(f"unknown variable store format {kind}")
    end = min(store + _u32(data, store + 16), len(data))
    added: dict[tuple[uuid.UUID, str], UefiVariable] = {}
    in_transition: dict[tuple[uuid.UUID, str], UefiVariable] = {}
    pos = store + 28
    while pos + header <= end and data[pos:pos + 2] == b"\xaa\x55":
        state, attributes = data[pos + 2], _u32(data, pos + 4)
        name_size, data_size = _u32(data, pos + header - 24), _u32(data, pos + header - 20)
        guid = uuid.UUID(bytes_le=data[pos + header - 16:pos + header])
        name_at = pos + header
        if name_size > end or data_size > end or name_at + name_size + data_size > end:
            raise _bad_vars(f"the variable at offset {pos} runs past the store")
        name = data[name_at:name_at + name_size].decode("utf-16-le", "replace").split("\0", 1)[0]
        value = data[name_at + name_size:name_at + name_size + data_size]
        variable = UefiVariable(name=name, guid=guid, attributes=attributes, data=value)
        # edk2: VAR_ADDED is live; VAR_ADDED in deleted transition is live only until its new copy is added.
        if state == 0x3F:
            added[(guid, name)] = variable
        elif state == 0x3E:
            in_transition[(guid, name)] = variable
        pos = (name_at + name_size + data_size + 3) & ~3
    return list({**in_transition, **added}.values())


def signature_entries(esl: bytes) -> list[tuple[uuid.UUID, bytes]]:
    """(signature type, EFI_SIGNATURE_DATA = owner GUID + data) of every entry of EFI_SIGNATURE_LISTs."""
    entries, pos = [], 0
    while pos + 28 <= len(esl):
        sig_type = uuid.UUID(bytes_le=esl[pos:pos + 16])
        list_size, header_size, sig_size = _u32(esl, pos + 16), _u32(esl, pos + 20), _u32(esl, pos + 24)
        if list_size < 28 or pos + list_size > len(esl) or sig_size < 16 or 28 + header_size > list_size:
            raise _bad_vars(f"a signature list at offset {pos} has inconsistent sizes")
        at = pos + 28 + header_size
        while at + sig_size <= pos + list_size:
            entries.append((sig_type, esl[at:at + sig_size]))
            at += sig_size
        pos += list_size
    return entries


def variable_data(name: str, guid: uuid.UUID, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA: what EV_EFI_VARIABLE_* events carry and (for these types) hash."""
    encoded = name.encode("utf-16-le")
    return guid.bytes_le + struct.pack("<QQ", len(name), len(data)) + encoded + data


# ------------------------------------------------------------------------------------------ event log


def _bad_log(details: str) -> BootError:
    return BootError("the TPM event log cannot be parsed", details=details,
                     resolution="read /sys/kernel/security/tpm0/binary_bios_measurements whole, as root")


def parse_event_log(data: bytes) -> list[LogEvent]:
    """The TCG_PCR_EVENT2 records of a crypto-agile log (the Spec ID header event is checked, not returned)."""
    if len(data) > MAX_LOG_BYTES:
        raise _bad_log(f"{len(data)} bytes is more than any event log")
    if len(data) < 32 or _u32(data, 4) != EV_NO_ACTION:
        raise _bad_log("no Spec ID header event")
    spec_size = _u32(data, 28)
    spec = data[32:32 + spec_size]
    if len(spec) != spec_size or not spec.startswith(b"Spec ID Event03\0") or spec_size < 28:
        raise _bad_log("not a crypto-agile (Spec ID Event03) log")
    count = _u32(spec, 24)
    if count > MAX_DIGESTS or 28 + 4 * count > spec_size:
        raise _bad_log(f"the header names {count} digest algorithms")
    sizes = {int.from_bytes(spec[28 + 4 * i:30 + 4 * i], "little"): int.from_bytes(spec[30 + 4 * i:32 + 4 * i],
                                                                                    "little") for i in range(count)}
    if sizes.get(0x000B) != 32:
        raise _bad_log("the log has no sha256 bank")
    events: list[LogEvent] = []
    pos = 32 + spec_size
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"" or data[pos:].strip(b"\xff") == b"":
            break  # padding after the last event
        if len(events) >= MAX_LOG_EVENTS:
            raise _bad_log(f"more than {MAX_LOG_EVENTS} events")
        if pos + 12 > len(data):
            raise _bad_log(f"event {len(events) + 1} is truncated at offset {pos}")
        pcr, event_type, digests = _u32(data, pos), _u32(data, pos + 4), _u32(data, pos + 8)
        if pcr > 23 or digests > MAX_DIGESTS:
            raise _bad_log(f"event {len(events) + 1} at offset {pos}: PCR {pcr}, {digests} digests")
        pos += 12
        sha256 = None
        for _ in range(digests):
            alg = int.from_bytes(data[pos:pos + 2], "little")
            if alg not in sizes:
                raise _bad_log(f"event {len(events) + 1}: digest algorithm 0x{alg:04x} is not in the header")
            if pos + 2 + sizes[alg] > len(data):
                raise _bad_log(f"event {len(events) + 1}: truncated digest")
            if alg == 0x000B:
                sha256 = data[pos + 2:pos + 34].hex()
            pos += 2 + sizes[alg]
        if pos + 4 > len(data):
            raise _bad_log(f"event {len(events) + 1}: truncated event size")
        size = _u32(data, pos)
        pos += 4
        if size > MAX_EVENT_DATA or pos + size > len(data):
            raise _bad_log(f"event {len(events) + 1}: event data of {size} bytes runs past the log")
        events.append(LogEvent(pcr=pcr, event_type=event_type, sha256=sha256, data=data[pos:pos + size]))
        pos += size
    return events


def replay(events: Sequence[LogEvent]) -> dict[int, str]:
    """The sha256 bank after extending every event in order (PCRs without events are left out, but PCR 0)."""
    pcrs: dict[int, bytes] = {0: bytes(32)}
    for index, event in enumerate(events, 1):
        if event.event_type == EV_NO_ACTION:
            # The only EV_NO_ACTION that changes a PCR: the locality PCR 0 starts from (TPM2_Startup).
            if event.pcr == 0 and event.data.startswith(b"StartupLocality\0") and len(event.data) >= 17:
                pcrs[0] = bytes(31) + event.data[16:17]
            continue
        if event.sha256 is None:
            raise _bad_log(f"event {index} ({type_name(event.event_type)}) has no sha256 digest")
        pcrs[event.pcr] = hashlib.sha256(pcrs.get(event.pcr, bytes(32)) + bytes.fromhex(event.sha256)).digest()
    return {pcr: value.hex() for pcr, value in sorted(pcrs.items())}


def _file_path(device_path: bytes) -> str:
    """The file names (media FILEPATH nodes) of an EFI device path."""
    names, pos = [], 0
    while pos + 4 <= len(device_path):
        node_type, sub_type = device_path[pos], device_path[pos + 1]
        length = int.from_bytes(device_path[pos + 2:pos + 4], "little")
        if length < 4 or pos + length > len(device_path) or node_type == 0x7F:
            break
        if node_type == 0x04 and sub_type == 0x04:
            names.append(device_path[pos + 4:pos + length].decode("utf-16-le", "replace").rstrip("\0"))
        pos += length
    return "".join(names)


def describe(event_type: int, data: bytes) -> str:
    """A short human-readable account of an event's data (best effort: never raises)."""
    try:
        if event_type in (EV_EFI_ACTION, 0x00000005):
            return data.decode("ascii", "replace")
        if event_type == EV_SEPARATOR:
            return "separator" if data == SEPARATOR_DATA else f"separator (error 0x{data.hex()})"
        if event_type in (EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_VARIABLE_AUTHORITY, 0x80000002, 0x8000000C):
            if len(data) < 32:
                return f"variable data of {len(data)} bytes"
            guid = uuid.UUID(bytes_le=data[:16])
            name_len, data_len = struct.unpack_from("<QQ", data, 16)
            if 32 + 2 * name_len > len(data):
                return f"variable in {guid} (malformed)"
            name = data[32:32 + 2 * name_len].decode("utf-16-le", "replace")
            value = data[32 + 2 * name_len:32 + 2 * name_len + data_len]
            text = f"{name} ({guid}, {data_len} bytes)"
            cn = common_name(value[16:]) or common_name(value)
            return f"{text}: {cn}" if cn else text
        if event_type in (EV_EFI_BOOT_SERVICES_APPLICATION, 0x80000004, 0x80000005) and len(data) >= 32:
            length, path_len = struct.unpack_from("<Q", data, 8)[0], struct.unpack_from("<Q", data, 24)[0]
            path = _file_path(data[32:32 + min(path_len, len(data) - 32)])
            return f"image of {length} bytes" + (f" from {path}" if path else "")
    except (ValueError, struct.error):
        pass
    return f"{len(data)} bytes of event data"


# ------------------------------------------------------------------------------------------ prediction


def _event(pcr: int, event_type: int, digest: str, description: str) -> ExpectedEvent:
    return ExpectedEvent(pcr=pcr, event_type=event_type, type_name=type_name(event_type), sha256=digest,
                         description=description)


def _authority(name: str, guid: uuid.UUID, data: bytes, description: str) -> ExpectedEvent:
    return _event(7, EV_EFI_VARIABLE_AUTHORITY, _sha256(variable_data(name, guid, data)), description)


def sbat_levels(shim: bytes) -> tuple[bytes, bytes] | None:
    """shim's built-in (automatic, latest) SbatLevel payloads from its .sbatlevel section."""
    section = _section_data(shim, ".sbatlevel", "shim")
    if section is None or len(section) < 12:
        return None
    out = []
    # A format version, then the payload header {automatic, latest} whose offsets count from the header.
    for offset in (4 + _u32(section, 4), 4 + _u32(section, 8)):
        end = section.find(b"\0", offset)
        if offset >= len(section) or end < 0:
            return None
        out.append(section[offset:end])
    return out[0], out[1]


def _sbat_stamp(level: bytes) -> tuple[int, int]:
    """(version, datestamp) of an SbatLevel payload's first line "sbat,VERSION,DATESTAMP"."""
    fields = level.split(b"\n", 1)[0].split(b",")
    try:
        return int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return (0, 0)


def vendor_cert(shim: bytes) -> bytes | None:
    """The certificate shim trusts besides db (its .vendor_cert "vendor_authorized" entry), when it is X.509."""
    section = _section_data(shim, ".vendor_cert", "shim")
    if section is None or len(section) < 16:
        return None
    size, offset = _u32(section, 0), _u32(section, 8)
    cert = section[offset:offset + size]
    return cert if size and len(cert) == size and cert[:1] == b"\x30" else None


def _pcr_value(events: Sequence[ExpectedEvent], pcr: int) -> str:
    value = bytes(32)
    for event in events:
        if event.pcr == pcr:
            value = hashlib.sha256(value + bytes.fromhex(event.sha256)).digest()
    return value.hex()


def _policy_events(store: Mapping[tuple[uuid.UUID, str], UefiVariable], secure: bool) -> list[ExpectedEvent]:
    """PCR 7 up to the separator: SecureBoot, PK, KEK, db, dbx (measured empty when absent), dbt if present."""
    events = [_event(7, EV_EFI_VARIABLE_DRIVER_CONFIG,
                     _sha256(variable_data("SecureBoot", GLOBAL_GUID, b"\x01" if secure else b"\x00")),
                     f"firmware: SecureBoot = {int(secure)} (volatile, from PK and SecureBootEnable)")]
    wanted = [("PK", GLOBAL_GUID), ("KEK", GLOBAL_GUID), ("db", SECURITY_DB_GUID), ("dbx", SECURITY_DB_GUID)]
    if (SECURITY_DB_GUID, "dbt") in store:
        wanted.append(("dbt", SECURITY_DB_GUID))
    for name, guid in wanted:
        variable = store.get((guid, name))
        value = variable.data if variable else b""
        count = len(signature_entries(value)) if value else 0
        events.append(_event(7, EV_EFI_VARIABLE_DRIVER_CONFIG, _sha256(variable_data(name, guid, value)),
                             f"firmware: {name} ({len(value)} bytes, {count} entries)" if variable
                             else f"firmware: {name} (absent: measured empty)"))
    events.append(_event(7, EV_SEPARATOR, _sha256(SEPARATOR_DATA), "firmware: separator (end of policy)"))
    return events


def grub_version(grub: bytes) -> tuple[int, ...]:
    """Upstream grub's version from the image's .sbat section (`grub,N,Free Software Foundation,grub,2.12,...`);
    (0,) when it names none."""
    sbat = _section_data(grub, ".sbat", "grub") or b""
    for line in sbat.rstrip(b"\x00").decode("ascii", "replace").splitlines():
        fields = line.split(",")
        if len(fields) >= 5 and fields[0] == "grub" and re.fullmatch(r"\d+(\.\d+)*", fields[4]):
            return tuple(int(part) for part in fields[4].split("."))
    return (0,)


def predict(shim: bytes, grub: bytes, kernel: bytes, ovmf_vars: Path) -> Prediction:
    """PCR 4 and PCR 7 (sha256 bank) on the first boot of shim -> grub -> kernel under OVMF with these vars."""
    try:
        vars_bytes = ovmf_vars.read_bytes()
    except OSError as exc:
        raise _bad_vars(f"{ovmf_vars}: {exc.strerror}") from exc
    store = {(v.guid, v.name): v for v in parse_varstore(vars_bytes)}
    hashes = {name: authenticode_sha256(image, name) for name, image in
              (("shim", shim), ("grub", grub), ("kernel", kernel))}
    uncertain: list[str] = []
    pk = store.get((GLOBAL_GUID, "PK"))
    enable = store.get((SECURE_BOOT_ENABLE_GUID, "SecureBootEnable"))
    secure = bool(pk and pk.data) and (enable is None or enable.data[:1] != b"\x00")
    if not secure:
        uncertain.append("Secure Boot is off in this variable store: no image is verified, so PCR 7 has no "
                         "db or Shim authority (predicted so, but this is not the boot the disk is made for)")

    events = [
        _event(4, EV_EFI_ACTION, _sha256(CALLING_EFI_APPLICATION),
               "firmware: " + CALLING_EFI_APPLICATION.decode()),
        _event(4, EV_SEPARATOR, _sha256(SEPARATOR_DATA), "firmware: separator (end of pre-boot)"),
        _event(4, EV_EFI_BOOT_SERVICES_APPLICATION, hashes["shim"], "shim (EFI/BOOT/BOOTX64.EFI), by the firmware"),
        _event(4, EV_EFI_BOOT_SERVICES_APPLICATION, hashes["grub"], "grub (EFI/BOOT/grubx64.efi), by shim"),
    ]
    # Debian's grub 2.06 has shim verify the kernel (shim_lock) and then starts it through shim's image loader,
    # and shim measures it each time: twice in Debian 12's log. grub 2.12 loads it through shim's loader only:
    # once in Debian 13's log (both with shim 16.1, read from real boots).
    if grub_version(grub) < (2, 12):
        events.append(_event(4, EV_EFI_BOOT_SERVICES_APPLICATION, hashes["kernel"],
                             "kernel, by shim's verify protocol when grub checks it"))
    events.append(_event(4, EV_EFI_BOOT_SERVICES_APPLICATION, hashes["kernel"],
                         "kernel, by shim's loader when grub starts it"))
    events += _policy_events(store, secure)

    if secure:
        # The firmware verifies shim against db and logs the db entry that did it, once.
        shim_sigs = _signature_blobs(shim, "shim")
        matches = [entry for sig_type, entry in signature_entries(store[(SECURITY_DB_GUID, "db")].data
                                                                  if (SECURITY_DB_GUID, "db") in store else b"")
                   if sig_type == CERT_X509_GUID and _anchors(entry[16:], shim_sigs)]
        if matches:
            events.append(_authority("db", SECURITY_DB_GUID, matches[0],
                                     f"firmware: db entry that verifies shim: {common_name(matches[0][16:])}"))
            if len(matches) > 1:
                uncertain.append(f"{len(matches)} db certificates name shim's signer chain; the first is assumed")
        else:
            uncertain.append("no db certificate names shim's signer chain: the firmware would refuse shim, and "
                             "the db authority event is left out")

    # shim 16.1 import_mok_state(): MokSBState if set, then SbatLevel. (No MokListTrusted event when it is unset:
    # a real boot's log has none.)
    moksb = store.get((SHIM_LOCK_GUID, "MokSBState"))
    if moksb and moksb.data:
        events.append(_authority("MokSBState", SHIM_LOCK_GUID, moksb.data, "shim: MokSBState"))
        uncertain.append("MokSBState is set in the variable store; shim's insecure mode is not modelled")
    levels = sbat_levels(shim)
    if levels is None:
        uncertain.append("shim has no readable .sbatlevel section: its SbatLevel measurement is not predicted")
    else:
        candidate = levels[0] if secure else SBAT_VAR_ORIGINAL
        existing = store.get((SHIM_LOCK_GUID, "SbatLevel"))
        if (secure and existing and existing.attributes == VAR_ATTR_NV_BS and existing.data.startswith(b"sbat,")
                and _sbat_stamp(existing.data) >= _sbat_stamp(candidate)):
            candidate = existing.data  # shim keeps a level at least as new as its own
            uncertain.append("the variable store already holds SbatLevel; shim's keep-or-replace rule is "
                             "approximated by comparing version and datestamp")
        events.append(_authority("SbatLevel", SHIM_LOCK_GUID, candidate,
                                 "shim: SbatLevel " + candidate.split(b"\n", 1)[0].decode("ascii", "replace")))
    if (SHIM_LOCK_GUID, "MokListTrusted") in store:
        uncertain.append("MokListTrusted is set in the variable store; its measurement is not modelled")

    if secure:
        # shim verifies grub and then the kernel with its vendor certificate; it logs each distinct one once.
        cert = vendor_cert(shim)
        if cert is None:
            uncertain.append("shim carries no X.509 vendor certificate (a vendor_db build?): the authority it "
                             "logs for grub and the kernel is not predicted")
        else:
            # Logged under the name of the list shim found it in (MokListRT, where shim mirrors its built-in
            # certificate), as an EFI_SIGNATURE_DATA: shim's GUID as owner, then the certificate.
            events.append(_authority("MokListRT", SHIM_LOCK_GUID, SHIM_LOCK_GUID.bytes_le + cert,
                                     f"shim: its vendor certificate verifies grub: {common_name(cert)}"))
            for name, image in (("grub", grub), ("kernel", kernel)):
                if not _anchors(cert, _signature_blobs(image, name)):
                    uncertain.append(f"{name}'s signature does not name shim's vendor certificate: shim would "
                                     "refuse it or verify it through db/MOK (not modelled)")

    return Prediction(
        pcrs={pcr: _pcr_value(events, pcr) for pcr in (4, 7)},
        events=events,
        inputs={**{f"{name}_authenticode_sha256": value for name, value in hashes.items()},
                "ovmf_vars_sha256": _sha256(vars_bytes)},
        uncertain=uncertain,
        assumptions=list(ASSUMPTIONS),
    )


def _normal(value: str) -> str:
    return value.strip().lower().removeprefix("0x")


def compare(prediction: Prediction, events: Sequence[LogEvent], pcrs: Mapping[int, str]) -> list[str]:
    """Why the boot's PCRs differ from the prediction, event by event; empty when everything matches.

    pcrs: the TPM's values (e.g. /sys/class/tpm/tpm0/pcr-sha256/N, hex); events: the guest's parsed log.
    """
    problems: list[str] = []
    replayed = replay(events)
    for pcr in sorted(prediction.pcrs):
        expected = [e for e in prediction.events if e.pcr == pcr]
        actual = [e for e in events if e.pcr == pcr and e.event_type != EV_NO_ACTION]
        for index in range(max(len(expected), len(actual))):
            want = expected[index] if index < len(expected) else None
            got = actual[index] if index < len(actual) else None
            if want is not None and got is not None:
                if want.event_type != got.event_type or want.sha256 != got.sha256:
                    problems.append(f"PCR {pcr} event {index + 1}: expected {want.type_name} {want.sha256[:16]} "
                                    f"({want.description}), the log has {got.type_name} {(got.sha256 or '-')[:16]} "
                                    f"({got.description})")
            elif want is not None:
                problems.append(f"PCR {pcr} event {index + 1}: expected {want.type_name} {want.sha256[:16]} "
                                f"({want.description}) is missing from the log")
            elif got is not None:
                problems.append(f"PCR {pcr} event {index + 1}: unexpected {got.type_name} "
                                f"{(got.sha256 or '-')[:16]} ({got.description})")
        tpm = _normal(pcrs[pcr]) if pcr in pcrs else None
        log_value = replayed.get(pcr, bytes(32).hex())
        if tpm is None:
            problems.append(f"PCR {pcr}: the TPM's value was not read")
        elif tpm != log_value:
            problems.append(f"PCR {pcr}: the log replays to {log_value} but the TPM holds {tpm} "
                            "(the log is incomplete or does not belong to this boot)")
        if tpm is not None and tpm != prediction.pcrs[pcr]:
            problems.append(f"PCR {pcr}: predicted {prediction.pcrs[pcr]}, the TPM holds {tpm}")
    return problems
