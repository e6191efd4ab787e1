"""Customisation without forking: a validated YAML of users, packages, files, sysctls, kernel arguments,
services and commands becomes one more layer on top of an image's own, and the guest checks that prove it.

The layer is one `RUN` appended to the image's Containerfile in the build's copy of the context: the engine
reuses every layer of the image itself (same instructions, same context) and builds only this one, so a
customised variant rebuilds in seconds from the uncustomised image, and `assembler diff` shows the
customisation as that one layer. Its packages go through the same locking proxy as the image's.

No secret belongs here: there is no password field (unknown keys are errors), and file contents are part of
the image and of its history, like any other file of the build context.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from assembler.boot.checks import CheckSuite
from assembler.config import ImageSpec
from assembler.errors import ConfigError

# One RUN line is one argument of `sh -c`: Linux caps a single argument at 128 KiB (MAX_ARG_STRLEN).
MAX_SCRIPT_BYTES = 96 * 1024
MARKER = "# assembler customisation"

Name = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
Package = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9]+)?$")]
Unit = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9:_.@-]+$", max_length=255)]
SshKey = Annotated[str, StringConstraints(
    pattern=r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
            r" [A-Za-z0-9+/=]+( [^\n\r]*)?$", max_length=16384)]
KernelArg = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.,:/=+@-]+$", max_length=256)]
SysctlKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+(\.[A-Za-z0-9_*-]+)+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class User(_Strict):
    name: Name
    groups: list[Name] = Field(default_factory=list)
    ssh_keys: list[SshKey] = Field(default_factory=list, description="public keys only: authorized_keys lines")
    shell: str = Field("/bin/bash", pattern=r"^/[A-Za-z0-9/._-]+$")
    sudo: bool = Field(False, description="passwordless sudo (the account has no password)")


class FileItem(_Strict):
    path: str = Field(pattern=r"^/[^\x00\n]*$", max_length=1024)
    content: str | None = None
    source: str | None = Field(None, description="a file of the image directory, relative to it")
    mode: str = Field("0644", pattern=r"^0?[0-7]{3,4}$")
    owner: Name = "root"
    group: Name = "root"

    @model_validator(mode="after")
    def _one_source(self) -> FileItem:
        if (self.content is None) == (self.source is None):
            raise ValueError(f"{self.path}: give exactly one of content and source")
        if ".." in PurePosixPath(self.path).parts:
            raise ValueError(f"{self.path}: '..' is not allowed in a path")
        return self


class Services(_Strict):
    enable: list[Unit] = Field(default_factory=list)
    disable: list[Unit] = Field(default_factory=list)
    mask: list[Unit] = Field(default_factory=list)


class Customization(_Strict):
    """customize.yaml: what a user changes in an image without forking its Containerfile."""

    users: list[User] = Field(default_factory=list)
    packages: list[Package] = Field(default_factory=list)
    files: list[FileItem] = Field(default_factory=list)
    sysctls: dict[SysctlKey, str | int] = Field(default_factory=dict)
    kernel_args: list[KernelArg] = Field(default_factory=list)
    services: Services = Field(default_factory=Services)
    run: list[str] = Field(default_factory=list, description="shell commands, run last, as root")

    @field_validator("sysctls")
    @classmethod
    def _values(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        for key, item in value.items():
            if not re.fullmatch(r"[A-Za-z0-9 _.,:/=+-]*", str(item)):
                raise ValueError(f"sysctl {key}: value {item!r} has characters a sysctl.d line cannot hold")
        return value


def load(path: Path) -> Customization:
    """Read and validate a customisation file: one clear error for anything wrong in it."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the customisation {path}: {exc.strerror}",
                          resolution="pass an existing YAML file with --customize") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML", details=str(exc),
                          resolution="fix the YAML syntax") from exc
    try:
        return Customization.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid customisation {path}", details=str(exc),
                          resolution="keys: users, packages, files, sysctls, kernel_args, services, run "
                          "(no passwords: give users ssh_keys)") from exc


def file_data(custom: Customization, image_dir: Path) -> dict[str, bytes]:
    """Each file's bytes by its path in the image (sources read from the image directory, never outside it)."""
    found: dict[str, bytes] = {}
    root = image_dir.resolve()
    for item in custom.files:
        if item.content is not None:
            found[item.path] = item.content.encode()
            continue
        assert item.source is not None
        source = (image_dir / item.source).resolve()
        if not source.is_relative_to(root) or not source.is_file():
            raise ConfigError(f"customisation file source {item.source!r} is not a file of {image_dir}",
                              resolution="give a path relative to the image directory, inside it")
        found[item.path] = source.read_bytes()
    return found


def digest(custom: Customization, data: dict[str, bytes]) -> str:
    """The customisation's identity: its declaration and every file's bytes (what is hashed is what is used)."""
    record = {"spec": custom.model_dump(mode="json"),
              "files": {path: hashlib.sha256(blob).hexdigest() for path, blob in sorted(data.items())}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def script(custom: Customization, data: dict[str, bytes]) -> str:
    """The POSIX shell the layer runs: packages first (users may need their groups or shells), then users,
    files, sysctls, services and the free commands, then the same clean-up as the image's own last steps."""
    q = shlex.quote
    lines = ["set -eu"]
    if custom.packages:
        lines += ["apt-get update -q",
                  "apt-get install -y -q --no-install-recommends " + " ".join(q(p) for p in custom.packages)]
    for user in custom.users:
        groups = ["-G", ",".join(user.groups)] if user.groups else []
        for group in user.groups:
            lines.append(f"getent group {q(group)} >/dev/null || groupadd {q(group)}")
        lines.append(shlex.join(["useradd", "-m", "-s", user.shell, *groups, user.name]))
        if user.ssh_keys:
            home = f"/home/{user.name}"
            keys = "".join(f"{key}\n" for key in user.ssh_keys)
            lines += [f"install -d -m 0700 -o {q(user.name)} -g {q(user.name)} {home}/.ssh",
                      f"printf %s {q(keys)} > {home}/.ssh/authorized_keys",
                      f"chown {q(user.name)}:{q(user.name)} {home}/.ssh/authorized_keys",
                      f"chmod 0600 {home}/.ssh/authorized_keys"]
        if user.sudo:
            lines.append(f"printf '%s ALL=(ALL) NOPASSWD:ALL\\n' {q(user.name)} > /etc/sudoers.d/90-{user.name}"
                         f" && chmod 0440 /etc/sudoers.d/90-{user.name}")
    for item in custom.files:
        path = q(item.path)
        encoded = base64.b64encode(data[item.path]).decode()
        lines += [f"mkdir -p \"$(dirname {path})\"",
                  f"printf %s {encoded} | base64 -d > {path}",
                  f"chown {q(item.owner)}:{q(item.group)} {path}",
                  f"chmod {item.mode} {path}"]
    if custom.sysctls:
        conf = "".join(f"{key} = {value}\n" for key, value in custom.sysctls.items())
        lines.append(f"printf %s {q(conf)} > /etc/sysctl.d/90-assembler-customize.conf")
    for verb in ("enable", "disable", "mask"):
        units: list[str] = getattr(custom.services, verb)
        if units:
            lines.append(shlex.join(["systemctl", verb, *units]))
    lines += list(custom.run)
    # What the image's own hygiene step removes: apt's lists and caches, logs with times in them, backups.
    lines += ["rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb "
              "/var/cache/debconf/*-old /var/lib/dpkg/*-old /var/cache/ldconfig/aux-cache",
              "find /var/log -type f -delete", "rm -rf /tmp/* /var/tmp/*"]
    return "\n".join(lines) + "\n"


def containerfile_step(custom: Customization, data: dict[str, bytes]) -> str:
    """The one RUN instruction (with a marker comment) appended to the image's Containerfile."""
    encoded = base64.b64encode(script(custom, data).encode()).decode()
    step = f"\n{MARKER}\nRUN printf %s {encoded} | base64 -d > /tmp/customize.sh && sh /tmp/customize.sh " \
           "&& rm -f /tmp/customize.sh\n"
    if len(step) > MAX_SCRIPT_BYTES:
        raise ConfigError(f"the customisation is too large for one layer ({len(step) // 1024} KiB)",
                          resolution=f"keep it under {MAX_SCRIPT_BYTES // 1024} KiB: put large files in the "
                          "Containerfile's build context and COPY them there instead")
    return step


def checks(custom: Customization) -> CheckSuite:
    """What the guest must show for each item: the boot test checks the customisation as it checks the image."""
    suite: dict[str, dict[str, object]] = {"file": {}, "package": {}, "sysctl": {}, "command": {}, "service": {}}
    for user in custom.users:
        suite["command"][f"user {user.name}"] = {
            "run": f"id -nG {shlex.quote(user.name)}", "exit_status": 0,
            "stdout": [rf"\b{re.escape(group)}\b" for group in user.groups]}
        if user.ssh_keys:
            suite["file"][f"/home/{user.name}/.ssh/authorized_keys"] = {
                "exists": True, "mode": "0600", "owner": user.name,
                "contains": [re.escape(key.split()[1]) for key in user.ssh_keys]}
    for package in custom.packages:
        suite["package"][package.split(":")[0]] = {"installed": True}
    for item in custom.files:
        suite["file"][item.path] = {"exists": True, "mode": item.mode.zfill(4)[-4:], "owner": item.owner}
    for key, value in custom.sysctls.items():
        suite["sysctl"][key] = {"value": str(value)}
    for arg in custom.kernel_args:
        suite["command"][f"kernel argument {arg}"] = {
            "run": "cat /proc/cmdline", "exit_status": 0, "stdout": [rf"(^|\s){re.escape(arg)}(\s|$)"]}
    for unit in custom.services.mask:
        suite["command"][f"{unit} masked"] = {"run": f"systemctl is-enabled {shlex.quote(unit)} || true",
                                              "exit_status": 0, "stdout": ["^masked"]}
    for unit in custom.services.enable:
        suite["service"][unit] = {"enabled": True}
    keys = [f"/home/{user.name}/.ssh/authorized_keys" for user in custom.users if user.ssh_keys]
    return CheckSuite.model_validate({**{kind: items for kind, items in suite.items() if items},
                                      "hygiene": {"allowed_authorized_keys": keys}})


@dataclass(frozen=True)
class Loaded:
    """A customisation ready to use: the declaration, its files' bytes and its digest."""

    custom: Customization
    data: dict[str, bytes]
    digest: str
    source: Path


def of(spec: ImageSpec) -> Loaded | None:
    """The image's customisation (image.yaml `customize:` or --customize), as every phase reads it."""
    return for_image(spec.context, spec.config.customize)


def for_image(image_dir: Path, reference: str | None) -> Loaded | None:
    """image.yaml's `customize:` (or --customize, an absolute path), read and validated; None without one."""
    if reference is None:
        return None
    path = Path(reference) if Path(reference).is_absolute() else image_dir / reference
    custom = load(path)
    data = file_data(custom, image_dir)
    return Loaded(custom=custom, data=data, digest=digest(custom, data), source=path)

