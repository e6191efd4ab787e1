"""Where things live and what an image declares (Containerfiles/NAME/image.yaml)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from assembler.errors import ConfigError
from assembler.severity import FailOn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "debian-12"
DEFAULT_SOURCE_DATE_EPOCH = 1700000000
# Storage controllers the boot test can put the root disk on (assembler.boot.qemu.DISK_BUSES says which cloud
# uses which).
DiskBus = Literal["virtio", "scsi", "nvme", "sata", "pvscsi"]
# Debian's architecture names; the machine's own is amd64, others are built under emulation (binfmt + qemu-user).
Arch = Literal["amd64", "arm64"]
ARCHES: tuple[Arch, ...] = ("amd64", "arm64")
NATIVE_ARCH: Arch = "amd64"


def containerfiles_dir() -> Path:
    return Path(os.environ.get("ASSEMBLER_CONTAINERFILES", REPO_ROOT / "Containerfiles"))


def rootfs_dir() -> Path:
    return Path(os.environ.get("ASSEMBLER_ROOTFS_DIR", REPO_ROOT / "rootfs"))


def formats_dir() -> Path:
    return REPO_ROOT / "formats"


def cache_dir(override: Path | None = None) -> Path:
    if override is not None:
        return override
    env = os.environ.get("ASSEMBLER_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "assembler"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiskConfig(_Strict):
    size: str | None = Field(None, description="fixed disk size, e.g. 4G; default: content + headroom")
    headroom: str = "512M"
    layout: str | None = Field(None, description="layout file under formats/layouts/ or a path")
    layout_overrides: dict[str, object] = Field(default_factory=dict)
    # Goes verbatim into grub.cfg's `linux` line: printable characters only, none that grub's parser reads
    # as syntax (a newline or `;` would start a new command, `$` expand a variable).
    cmdline: str = Field("console=tty0 console=ttyS0,115200n8", pattern=r"^[^\x00-\x1f\x7f$;{}\\'\"`|&<>#]*$",
                         max_length=2048)


def _default_disk_buses() -> list[DiskBus]:
    return ["virtio"]


class BootConfig(_Strict):
    firmware: Literal["bios", "uefi", "uefi-secureboot", "both", "all"] = Field(
        "both", description="both: bios + uefi; all: bios, uefi and uefi-secureboot (OVMF with Microsoft's "
        "keys, Secure Boot enforcing)")
    tpm: bool = Field(False, description="a TPM 2.0 (swtpm) in uefi-secureboot boots: event log and PCRs checked")
    disk_buses: list[DiskBus] = Field(default_factory=_default_disk_buses, min_length=1,
                                      description="boot once per firmware and controller of the root disk")
    timeout: int = Field(600, gt=0)
    checks: str = "checks.yaml"


class SecretSource(_Strict):
    """Where a build secret's value is read on the building machine: exactly one of env and file."""

    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable")
    file: str | None = Field(None, min_length=1, description="path, relative to the image directory")

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret names exactly one source: {env: NAME} or {file: PATH}")
        return self


SecretId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
# A format option as image.yaml can write it (the format's own model checks it): a flag, a number or a word.
FormatOption = bool | int | str


class ScanConfig(_Strict):
    """The scan phase: the disk's packages against an OSV advisory database after every build."""

    db: str = Field(min_length=1, description="OSV file, directory or zip (relative to the image directory), "
                    "or its http(s) URL, fetched into the cache")
    fail_on: FailOn | None = Field(None, description="fail the build on a finding at least this severe")


class ImageConfig(_Strict):
    """Everything an image declares besides its Containerfile."""

    description: str = ""
    base: str | None = Field(None, description="base recipe under rootfs/ bootstrapped and loaded first")
    # Up to 9999-12-31: tar, SPDX and RFC 3339 timestamps cannot say later.
    source_date_epoch: int = Field(DEFAULT_SOURCE_DATE_EPOCH, ge=0, le=253402300799)
    build_args: dict[str, str] = Field(default_factory=dict)
    secrets: dict[SecretId, SecretSource] = Field(
        default_factory=dict, description="values RUN steps mount (--mount=type=secret,id=ID) and the image "
        "never holds; read at build time, never hashed, recorded or logged")
    formats: list[str] = Field(default_factory=lambda: ["raw", "qcow2"])
    format_options: dict[str, dict[str, FormatOption]] = Field(
        default_factory=dict, description="options of a format or profile over its defaults whenever the image "
        "is written in it (formats: or --format), e.g. qcow2: {compress: true, compression_type: zstd}")
    architectures: list[Arch] = Field(default_factory=lambda: [NATIVE_ARCH], min_length=1,
                                      description="`assembler build IMAGE` builds each (`--arch` picks one)")
    disk: DiskConfig = Field(default_factory=DiskConfig)
    boot: BootConfig = Field(default_factory=BootConfig)
    customize: str | None = Field(None, description="customisation YAML (users, packages, files, sysctls, "
                                  "kernel_args, services, run), relative to the image directory: one more layer")
    secure_boot: bool = Field(False, description="UEFI boots the image's Microsoft-signed shim, then its "
                              "Debian-signed grub and kernel (needs shim-signed and grub-efi-amd64-signed)")
    properties: dict[str, str] = Field(default_factory=dict, description="versions shown in OVF/labels")
    scan: ScanConfig | None = Field(None, description="scan the disk's packages against OSV advisories")
    snapshots: dict[str, str] = Field(
        default_factory=dict, description="dated snapshot mirrors of the apt archives, where locked files are "
        "found once the archive moved on: {archive URL: URL with {timestamp}}; the mirror map's win")


class ImageSpec(BaseModel):
    """A resolved image: its name, its build context and its declared config."""

    model_config = ConfigDict(frozen=True)

    name: str  # outputs, engine tags and cache refs; IMAGE-ARCH for an architecture other than amd64
    context: Path
    containerfile: Path
    config: ImageConfig
    arch: Arch = NATIVE_ARCH

    def for_arch(self, arch: Arch) -> ImageSpec:
        """The same image built for `arch`: its own name (debian-12-arm64), so nothing of one architecture's
        build (outputs, engine image, lock, cache refs) is taken for the other's."""
        base = self.name.removesuffix(f"-{self.arch}") if self.arch != NATIVE_ARCH else self.name
        return self.model_copy(update={"arch": arch, "name": base if arch == NATIVE_ARCH else f"{base}-{arch}"})


def list_images() -> list[str]:
    root = containerfiles_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/Containerfile"))


def load_image_config(path: Path) -> ImageConfig:
    if not path.exists():
        return ImageConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return ImageConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid image config {path}", details=str(exc),
                          resolution="fix the file; see README 'Image configuration'") from exc


def resolve_image(name_or_path: str) -> ImageSpec:
    """IMAGE is a name under Containerfiles/ or a directory holding a Containerfile."""
    candidate = Path(name_or_path)
    context = candidate if candidate.is_dir() else containerfiles_dir() / name_or_path
    if not context.is_dir():
        known = ", ".join(list_images()) or "none"
        raise ConfigError(f"unknown image: {name_or_path}",
                          resolution=f"use one of: {known}, or a path to a directory with a Containerfile")
    containerfile = context / "Containerfile"
    if not containerfile.is_file():
        raise ConfigError(f"no Containerfile in {context}",
                          resolution=f"create {containerfile} (see Containerfiles/debian-12 for an example)")
    # Absolute paths throughout: later phases relate the Containerfile to the context (a relative
    # `./my-image` must give the same spec, and the same cache keys, as its absolute path).
    context = context.resolve()
    return ImageSpec(name=context.name, context=context, containerfile=context / "Containerfile",
                     config=load_image_config(context / "image.yaml"))
