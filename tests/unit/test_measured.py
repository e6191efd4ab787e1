"""Measured-boot prediction: Authenticode hashes, the OVMF variable store, the TCG event log and the PCR 4/7
sequences, all on small synthetic bytes built here (no downloads, no root)."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from assembler import measured
from assembler.errors import BootError, DiskError

# ------------------------------------------------------------------------------------------- builders


def build_pe(sections: list[tuple[str, bytes]], cert: bytes = b"", trailing: bytes = b"") -> bytes:
    """A PE32+ image: headers in 0x200 bytes, sections padded to 0x200, the COFF string table (long section
    names), trailing bytes, then the certificate table (one WIN_CERTIFICATE holding cert)."""
    strtab, names = b"", []
    for name, _ in sections:
        if len(name) > 8:
            names.append(f"/{4 + len(strtab)}".encode())
            strtab += name.encode() + b"\0"
        else:
            names.append(name.encode())
    body, table, offset = b"", b"", 0x200
    for index, (_, data) in enumerate(sections):
        padded = data + bytes(-len(data) % 0x200)
        table += struct.pack("<8sIIIIIIHHI", names[index].ljust(8, b"\0"), len(data), 0x1000 * (index + 1),
                             len(padded), offset, 0, 0, 0, 0, 0x40000040)
        body += padded
        offset += len(padded)
    tail = (struct.pack("<I", 4 + len(strtab)) + strtab if strtab else b"") + trailing
    wincert = b""
    if cert:
        wincert = struct.pack("<IHH", 8 + len(cert), 0x0200, 0x0002) + cert
        wincert += bytes(-len(wincert) % 8)
    coff = struct.pack("<HHIIIHH", 0x8664, len(sections), 0, offset if strtab else 0, 0, 240, 0x0022)
    opt = struct.pack("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", 0x20B, 2, 0, 0x200 * len(sections), 0, 0, 0x1000, 0x1000,
                      0x10000000, 0x1000, 0x200, 0, 0, 0, 0, 0, 0, 0, 0x1000 * (len(sections) + 1), 0x200,
                      0xDEADBEEF, 10, 0, 0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    dirs = [(0, 0)] * 16
    if cert:
        dirs[4] = (offset + len(tail), len(wincert))
    opt += b"".join(struct.pack("<II", *d) for d in dirs)
    headers = b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"PE\0\0" + coff + opt + table
    return headers + bytes(0x200 - len(headers)) + body + tail + wincert


def der(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    size = len(content).to_bytes(2, "big")
    return bytes([tag, 0x82]) + size + content


def name(cn: str) -> bytes:
    return der(0x30, der(0x31, der(0x30, b"\x06\x03\x55\x04\x03" + der(0x0C, cn.encode()))))


def certificate(subject: str, issuer: str) -> bytes:
    """Only the shape of an X.509 certificate: enough for the subject lookups (nothing here is signed)."""
    tbs = der(0xA0, der(0x02, b"\x02")) + der(0x02, b"\x01") + der(0x30, b"") + name(issuer) + der(0x30, b"")
    return der(0x30, der(0x30, tbs + name(subject)) + der(0x30, b"") + der(0x03, b"\x00"))


def esl(sig_type: uuid.UUID, owner: uuid.UUID, payloads: list[bytes]) -> bytes:
    size = 16 + len(payloads[0])
    return (sig_type.bytes_le + struct.pack("<III", 28 + size * len(payloads), 0, size)
            + b"".join(owner.bytes_le + p for p in payloads))


def variable(var_name: str, guid: uuid.UUID, data: bytes, state: int = 0x3F, attributes: int = 0x27) -> bytes:
    encoded = (var_name + "\0").encode("utf-16-le")
    header = struct.pack("<HBBIQ16sIII", 0x55AA, state, 0, attributes, 0, bytes(16), 0, len(encoded), len(data))
    record = header + guid.bytes_le + encoded + data
    return record + bytes(-len(record) % 4)


def varstore(records: list[bytes]) -> bytes:
    fv = bytes(16) + measured.NV_DATA_FV_GUID.bytes_le + struct.pack("<Q", 0x40000) + b"_FVH"
    fv += struct.pack("<IHHHBB", 0x4FEFF, 72, 0, 0, 0, 2) + struct.pack("<IIII", 0x40, 0x1000, 0, 0)
    store = b"".join(records)
    header = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792").bytes_le + struct.pack("<IBBHI", 28 + len(store)
                                                                                      + 64, 0x5A, 0xFE, 0, 0)
    return fv + header + store + b"\xff" * 64


def event_log(events: list[tuple[int, int, bytes, bytes]]) -> bytes:
    """A crypto-agile log with sha1 and sha256 banks; events are (pcr, type, sha256 digest, data)."""
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 2) + struct.pack("<HHHH", 4, 20, 11, 32)
    spec += b"\0"
    out = struct.pack("<II", 0, measured.EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for pcr, event_type, digest, data in events:
        out += struct.pack("<III", pcr, event_type, 2) + struct.pack("<H", 4) + hashlib.sha1(digest).digest()
        out += struct.pack("<H", 11) + digest + struct.pack("<I", len(data)) + data
    return out


# --------------------------------------------------------------------------------------------- fixtures

MS_CA = certificate("Test UEFI CA", "Test Root")
OTHER_CA = certificate("Test Windows PCA", "Test Root 2")
VENDOR = certificate("Test Distro CA", "Test Distro CA")
MS_OWNER = uuid.UUID("77fa9abd-0359-4d32-bd60-28f4e78f784b")


def sbatlevel(automatic: bytes, latest: bytes) -> bytes:
    return struct.pack("<III", 0, 8, 8 + len(automatic) + 1) + automatic + b"\0" + latest + b"\0"


def vendor_section(cert: bytes) -> bytes:
    return struct.pack("<IIII", len(cert), 0, 16, 16 + len(cert)) + cert


# A signature blob only needs to name its issuer for the chain lookup: the signer's issuer Name.
SHIM = build_pe([(".text", b"shim code" * 40), (".sbatlevel", sbatlevel(b"sbat,1,2025021800\nshim,4\n",
                                                                          b"sbat,1,2025051000\nshim,4\n")),
                 (".vendor_cert", vendor_section(VENDOR))],
                cert=der(0x30, certificate("Test Driver Publisher", "Test UEFI CA")))
GRUB = build_pe([(".text", b"grub code" * 50)], cert=der(0x30, certificate("Test Distro Signer", "Test Distro CA")))
KERNEL = build_pe([(".text", b"kernel" * 90)], cert=der(0x30, certificate("Test Distro Signer", "Test Distro CA")))


def secure_vars(tmp_path: Path, extra: list[bytes] | None = None) -> Path:
    x509 = measured.CERT_X509_GUID
    records = [
        variable("CustomMode", uuid.UUID("c076ec0c-7028-4399-a072-71ee5c448b9f"), b"\x01", state=0x3C),
        variable("PK", measured.GLOBAL_GUID, esl(x509, MS_OWNER, [OTHER_CA])),
        variable("KEK", measured.GLOBAL_GUID, esl(x509, MS_OWNER, [OTHER_CA])),
        variable("db", measured.SECURITY_DB_GUID, esl(x509, MS_OWNER, [OTHER_CA]) + esl(x509, MS_OWNER, [MS_CA])),
        variable("SecureBootEnable", measured.SECURE_BOOT_ENABLE_GUID, b"\x01", attributes=3),
        *(extra or []),
    ]
    path = tmp_path / "OVMF_VARS.fd"
    path.write_bytes(varstore(records))
    return path


# ------------------------------------------------------------------------------------------ Authenticode


def test_authenticode_matches_pesign() -> None:
    # Expected values from `pesign -i FILE -h` (pesign 116, Debian 12) run once on these exact bytes: the first
    # has a long section name (string table), trailing data and a certificate table, the second none of them.
    signed = build_pe([(".text", b"\x90" * 300), (".sbatlevel", b"abc" * 50)], cert=b"\x30\x03\x02\x01\x01" * 10,
                      trailing=b"TRAIL")
    plain = build_pe([(".text", b"\x90" * 300), (".data", b"xyz" * 20)])
    assert measured.authenticode_sha256(signed) == "d6e44b2a7c5543b0f10d80079def8c496a0f676ca421d1c82b697483826abbba"
    assert measured.authenticode_sha256(plain) == "4b6618e032e2b4b9d60079d8e50ec8d69d953efa65d78329ea6d5a6c19e72ba0"


def test_authenticode_skips_checksum_and_certificates_only() -> None:
    image = build_pe([(".text", b"code" * 100)], cert=b"signature one")
    resigned = build_pe([(".text", b"code" * 100)], cert=b"signature two!!")
    checksum_at = 0x40 + 4 + 20 + 64
    rechecked = image[:checksum_at] + b"\x01\x02\x03\x04" + image[checksum_at + 4:]
    patched = image.replace(b"codecode", b"codeCODE", 1)
    digest = measured.authenticode_sha256(image)
    # The certificate entry's size differs between the two signatures and is skipped with the table.
    assert measured.authenticode_sha256(resigned) == digest
    assert measured.authenticode_sha256(rechecked) == digest
    assert measured.authenticode_sha256(patched) != digest


@pytest.mark.parametrize("mangle", [
    lambda b: b[:100],                              # truncated headers
    lambda b: b"ZM" + b[2:],                        # no DOS signature
    lambda b: b[:0x300],                            # section data cut off
    lambda b: b"",                                  # empty
])
def test_authenticode_rejects_malformed(mangle: object) -> None:
    image = build_pe([(".text", b"code" * 200)])
    with pytest.raises(DiskError, match="not a usable PE image"):
        measured.authenticode_sha256(mangle(image))  # type: ignore[operator]


def test_certificate_table_larger_than_the_file_is_rejected() -> None:
    image = bytearray(build_pe([(".text", b"code" * 10)], cert=b"sig"))
    security_entry = 0x40 + 4 + 20 + 112 + 4 * 8
    struct.pack_into("<I", image, security_entry + 4, 0x7FFFFFFF)
    with pytest.raises(DiskError):
        measured.authenticode_sha256(bytes(image))


# ------------------------------------------------------------------------------------------- varstore


def test_varstore_keeps_live_variables_only(tmp_path: Path) -> None:
    guid = measured.GLOBAL_GUID
    data = varstore([
        variable("BootOrder", guid, b"\x00\x00", state=0x3C),        # deleted
        variable("Timeout", guid, b"\x05\x00", state=0x3E),          # in deleted transition, then replaced
        variable("Timeout", guid, b"\x00\x00"),
        variable("Lang", guid, b"eng\0", state=0x3E),                # in transition, no new copy: still live
        variable("Boot0000", guid, b"\x01" * 7, state=0x7F),         # header only
    ])
    live = {v.name: v.data for v in measured.parse_varstore(data)}
    assert live == {"Timeout": b"\x00\x00", "Lang": b"eng\0"}


@pytest.mark.parametrize("mangle", [
    lambda b: b[:60],
    lambda b: b[:40] + b"_XXX" + b[44:],
    lambda b: b[:72] + bytes(16) + b[88:],  # unknown store GUID
])
def test_varstore_rejects_malformed(mangle: object) -> None:
    data = varstore([variable("PK", measured.GLOBAL_GUID, b"x")])
    with pytest.raises(DiskError, match="variable store"):
        measured.parse_varstore(mangle(data))  # type: ignore[operator]


def test_varstore_variable_running_past_the_store_is_rejected() -> None:
    data = bytearray(varstore([variable("PK", measured.GLOBAL_GUID, b"x" * 10)]))
    struct.pack_into("<I", data, 72 + 28 + 40, 0x100000)  # DataSize
    with pytest.raises(DiskError, match="runs past"):
        measured.parse_varstore(bytes(data))


def test_signature_list_with_bad_sizes_is_rejected() -> None:
    good = esl(measured.CERT_X509_GUID, MS_OWNER, [MS_CA])
    assert measured.signature_entries(good) == [(measured.CERT_X509_GUID, MS_OWNER.bytes_le + MS_CA)]
    with pytest.raises(DiskError):
        measured.signature_entries(good[:16] + struct.pack("<I", 10**6) + good[20:])


@pytest.mark.skipif(not Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").exists(), reason="the ovmf package is absent")
def test_debian_ovmf_ms_vars_hold_the_microsoft_keys() -> None:
    store = {v.name: v for v in measured.parse_varstore(Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").read_bytes())}
    assert {"PK", "KEK", "db", "dbx", "SecureBootEnable"} <= set(store)
    names = [measured.common_name(entry[16:]) for _, entry in measured.signature_entries(store["db"].data)]
    assert "Microsoft Corporation UEFI CA 2011" in names


# ------------------------------------------------------------------------------------------ event log


def test_event_log_parses_and_replays() -> None:
    one, two = hashlib.sha256(b"one").digest(), hashlib.sha256(b"two").digest()
    log = event_log([(0, measured.EV_NO_ACTION, bytes(32), b"StartupLocality\0\x03"),
                     (4, measured.EV_EFI_ACTION, one, b"one"), (4, measured.EV_SEPARATOR, two, b"\0\0\0\0"),
                     (7, measured.EV_SEPARATOR, two, b"\0\0\0\0")])
    events = measured.parse_event_log(log + bytes(16))  # padding after the last event is allowed
    assert [(e.pcr, e.type_name) for e in events] == [(0, "EV_NO_ACTION"), (4, "EV_EFI_ACTION"),
                                                      (4, "EV_SEPARATOR"), (7, "EV_SEPARATOR")]
    assert events[1].description == "one" and events[2].description == "separator"
    pcr4 = hashlib.sha256(hashlib.sha256(bytes(32) + one).digest() + two).hexdigest()
    assert measured.replay(events) == {0: bytes(31).hex() + "03", 4: pcr4,
                                       7: hashlib.sha256(bytes(32) + two).hexdigest()}


def test_replay_agrees_with_tpm2_eventlog(tmp_path: Path) -> None:
    authority = measured.variable_data("db", measured.SECURITY_DB_GUID, MS_OWNER.bytes_le + MS_CA)
    events = [(4, measured.EV_EFI_ACTION, hashlib.sha256(b"a").digest(), b"a"),
              (7, measured.EV_EFI_VARIABLE_AUTHORITY, hashlib.sha256(authority).digest(), authority),
              (4, measured.EV_SEPARATOR, hashlib.sha256(bytes(4)).digest(), bytes(4))]
    path = tmp_path / "log.bin"
    path.write_bytes(event_log(events))
    out = subprocess.run(["tpm2_eventlog", str(path)], capture_output=True, text=True, check=True).stdout
    ours = measured.replay(measured.parse_event_log(path.read_bytes()))
    sha256_part = out.split("sha256:", 1)[1]
    for pcr in (4, 7):
        assert re.search(rf"\b{pcr}\s*: 0x{ours[pcr]}", sha256_part, re.IGNORECASE), sha256_part


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b[:20], "no Spec ID"),
    (lambda b: b[:32] + b"Spec ID Event02\0" + b[48:], "crypto-agile"),
    (lambda b: b[:-3], "runs past"),                               # event data cut short
    (lambda b: b[:-40], "truncated|runs past"),                     # cut inside the digests
    (lambda b: b + struct.pack("<III", 4, 1, 1) + b"\x12\x00", "not in the header"),
    (lambda b: b + struct.pack("<III", 99, 1, 0) + bytes(4), "PCR 99"),
])
def test_event_log_rejects_malformed(mangle: object, message: str) -> None:
    log = event_log([(4, measured.EV_EFI_ACTION, hashlib.sha256(b"x").digest(), b"x" * 8)])
    with pytest.raises(BootError, match=message):
        measured.parse_event_log(mangle(log))  # type: ignore[operator]


def test_event_log_without_sha256_bank_is_rejected() -> None:
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1) + struct.pack("<HH", 4, 20) + b"\0"
    log = struct.pack("<II", 0, measured.EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec
    with pytest.raises(BootError, match="no sha256 bank"):
        measured.parse_event_log(log)


# ----------------------------------------------------------------------------------------- prediction


def log_of(prediction: measured.Prediction) -> list[measured.LogEvent]:
    """The log a boot that matches the prediction would leave (PCR 4 and 7 interleaved like a real one)."""
    raw = [(e.pcr, e.event_type, bytes.fromhex(e.sha256), e.description.encode()) for e in prediction.events]
    return measured.parse_event_log(event_log(sorted(raw, key=lambda r: -r[0])))


def test_prediction_sequence(tmp_path: Path) -> None:
    prediction = measured.predict(SHIM, GRUB, KERNEL, secure_vars(tmp_path))
    pcr4 = [(e.type_name, e.sha256) for e in prediction.events if e.pcr == 4]
    assert pcr4 == [
        ("EV_EFI_ACTION", hashlib.sha256(b"Calling EFI Application from Boot Option").hexdigest()),
        ("EV_SEPARATOR", hashlib.sha256(bytes(4)).hexdigest()),
        ("EV_EFI_BOOT_SERVICES_APPLICATION", measured.authenticode_sha256(SHIM)),
        ("EV_EFI_BOOT_SERVICES_APPLICATION", measured.authenticode_sha256(GRUB)),
        ("EV_EFI_BOOT_SERVICES_APPLICATION", measured.authenticode_sha256(KERNEL)),  # shim_lock verify
        ("EV_EFI_BOOT_SERVICES_APPLICATION", measured.authenticode_sha256(KERNEL)),  # shim's loader
    ]
    pcr7 = [e for e in prediction.events if e.pcr == 7]
    assert [e.description.split(":")[0] for e in pcr7] == [
        "firmware", "firmware", "firmware", "firmware", "firmware", "firmware", "firmware", "shim", "shim"]
    assert "Test UEFI CA" in pcr7[6].description and "Test Distro CA" in pcr7[8].description
    # shim logs its built-in certificate as the MokListRT entry it mirrors it into: its GUID as owner, the cert.
    assert pcr7[8].sha256 == hashlib.sha256(measured.variable_data(
        "MokListRT", measured.SHIM_LOCK_GUID, measured.SHIM_LOCK_GUID.bytes_le + VENDOR)).hexdigest()
    db_entry = MS_OWNER.bytes_le + MS_CA
    assert pcr7[6].sha256 == hashlib.sha256(
        measured.SECURITY_DB_GUID.bytes_le + struct.pack("<QQ", 2, len(db_entry)) + "db".encode("utf-16-le")
        + db_entry).hexdigest()
    assert pcr7[7].sha256 == hashlib.sha256(measured.variable_data(
        "SbatLevel", measured.SHIM_LOCK_GUID, b"sbat,1,2025021800\nshim,4\n")).hexdigest()
    assert pcr7[4].description == "firmware: dbx (absent: measured empty)"
    assert prediction.uncertain == []
    assert prediction.pcrs == {pcr: v for pcr, v in measured.replay(log_of(prediction)).items() if pcr in (4, 7)}
    again = measured.Prediction.model_validate_json(prediction.model_dump_json())
    assert again == prediction


def test_prediction_says_what_it_cannot_derive(tmp_path: Path) -> None:
    unsigned_grub = build_pe([(".text", b"grub code" * 50)])
    no_sbat_shim = build_pe([(".text", b"shim" * 40)], cert=der(0x30, certificate("X", "Unknown CA")))
    prediction = measured.predict(no_sbat_shim, unsigned_grub, KERNEL, secure_vars(tmp_path))
    text = "\n".join(prediction.uncertain)
    assert "no db certificate" in text and ".sbatlevel" in text and "vendor certificate" in text


def test_existing_newer_sbatlevel_is_kept(tmp_path: Path) -> None:
    newer = b"sbat,1,2099010100\nshim,9\n"
    vars_path = secure_vars(tmp_path, [variable("SbatLevel", measured.SHIM_LOCK_GUID, newer, attributes=3)])
    prediction = measured.predict(SHIM, GRUB, KERNEL, vars_path)
    sbat = next(e for e in prediction.events if "SbatLevel" in e.description)
    assert sbat.sha256 == hashlib.sha256(measured.variable_data("SbatLevel", measured.SHIM_LOCK_GUID,
                                                                newer)).hexdigest()


def test_compare_matches_and_explains(tmp_path: Path) -> None:
    prediction = measured.predict(SHIM, GRUB, KERNEL, secure_vars(tmp_path))
    events = log_of(prediction)
    assert measured.compare(prediction, events, {4: prediction.pcrs[4].upper(), 7: prediction.pcrs[7]}) == []

    other_kernel = build_pe([(".text", b"other kernel" * 40)])
    raw = [(e.pcr, e.event_type, bytes.fromhex(e.sha256), e.description.encode()) for e in prediction.events]
    raw[4] = (4, measured.EV_EFI_BOOT_SERVICES_APPLICATION,
              bytes.fromhex(measured.authenticode_sha256(other_kernel)), bytes(32))
    raw.append((7, measured.EV_EFI_VARIABLE_AUTHORITY, bytes(32), b"x"))
    wrong = measured.parse_event_log(event_log(raw))
    replayed = measured.replay(wrong)
    problems = measured.compare(prediction, wrong, {4: replayed[4], 7: replayed[7]})
    assert any("PCR 4 event 5" in p and "kernel" in p and "EV_EFI_BOOT_SERVICES_APPLICATION" in p for p in problems)
    assert any("PCR 7 event 10: unexpected EV_EFI_VARIABLE_AUTHORITY" in p for p in problems)
    assert any(p.startswith("PCR 4: predicted") for p in problems)

    missing = [e for e in events if not (e.pcr == 4 and e.sha256 == measured.authenticode_sha256(GRUB))]
    problems = measured.compare(prediction, missing, prediction.pcrs)
    assert any("is missing from the log" in p for p in problems)
    assert any("the log replays to" in p for p in problems)


def test_grub_2_12_has_its_kernel_measured_once(tmp_path: Path) -> None:
    sbat = b"sbat,1,SBAT Version,sbat,1,https://x\ngrub,7,Free Software Foundation,grub,2.12,https://y\n"
    grub_212 = build_pe([(".text", b"grub code" * 50), (".sbat", sbat)],
                        cert=der(0x30, certificate("Test Distro Signer", "Test Distro CA")))
    assert measured.grub_version(grub_212) == (2, 12) and measured.grub_version(GRUB) == (0,)
    kernel_events = [e for e in measured.predict(SHIM, grub_212, KERNEL, secure_vars(tmp_path)).events
                     if e.pcr == 4 and e.sha256 == measured.authenticode_sha256(KERNEL)]
    assert len(kernel_events) == 1
