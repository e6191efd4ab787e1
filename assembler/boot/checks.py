"""The goss-like check language: YAML -> pydantic models -> shell probes run in the guest -> results.

A checks file groups checks by kind, each keyed by what it checks (a unit, a path, a package ...):

    boot:    {cloud_init: true, allow_degraded: false}
    hygiene: {max_var_log_mib: 10, skip: []}
    service:       {ssh: {active: true, enabled: true}}
    file:          {/etc/assembler-release: {exists: true, mode: "0644", owner: root, contains: ["^ID="]}}
    command:       {arch: {run: uname -m, exit_status: 0, stdout: ["^x86_64$"]}}
    package:       {linux-image-amd64: {installed: true, version: "^6\\."}}
    kernel_module: {virtio_net: {loaded: true}}
    sysctl:        {kernel.hostname: {value: assembler-boot}}
    mount:         {/: {fstype: ext4, options: [rw]}}

Every guest check renders to a small POSIX shell probe (so the guest needs no agent) and judges the
probe's exit status and output on the host, where every regex is a Python regex.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from assembler.errors import ConfigError

# Bumped whenever the built-in checks (hygiene set, boot waits) change meaning: part of the boot cache key.
BUILTIN_CHECKS_VERSION = 3  # 2: Secure Boot and TPM checks; 3: the architecture (uname -m)

# `systemctl is-enabled` states that mean "starts without anyone asking" (exit status 0 in systemctl(1)).
ENABLED_STATES = frozenset(
    {"enabled", "enabled-runtime", "static", "alias", "indirect", "generated", "transient"}
)
FILE_READ_LIMIT = 1 << 20
DEFAULT_COMMAND_TIMEOUT = 60


class CheckResult(BaseModel):
    """One check's outcome: what reports, summaries and JUnit are made of."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: str
    passed: bool
    message: str = ""


@dataclass(frozen=True)
class ProbeOutput:
    """What a probe printed in the guest."""

    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Probe:
    """A guest check ready to run: the shell snippet and the function that judges its output."""

    name: str
    kind: str
    script: str
    judge: Callable[[ProbeOutput], tuple[bool, str]]

    def result(self, out: ProbeOutput) -> CheckResult:
        passed, message = self.judge(out)
        return CheckResult(name=self.name, kind=self.kind, passed=passed, message=message)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _compile_all(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
    return patterns


def _failed_to_run(out: ProbeOutput) -> str:
    detail = (out.stderr or out.stdout).strip().splitlines()
    return f"probe failed (exit {out.exit_status}): {detail[-1] if detail else 'no output'}"


class ServiceCheck(_Model):
    active: bool | None = True
    enabled: bool | None = None

    def probe(self, unit: str) -> Probe:
        # One systemctl for both states (each systemctl start costs ~0.1 s of a TCG guest's CPU): ActiveState is
        # what is-active prints, UnitFileState what is-enabled prints (empty for a unit that does not exist).
        script = f"systemctl show --property=ActiveState --property=UnitFileState -- {shlex.quote(unit)}"
        return Probe(f"service {unit}", "service", script, self._judge)

    def _judge(self, out: ProbeOutput) -> tuple[bool, str]:
        fields = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        active, enabled = fields.get("ActiveState", ""), fields.get("UnitFileState", "")
        problems = []
        if self.active is not None and (active == "active") != self.active:
            problems.append(f"expected {'active' if self.active else 'not active'}, is {active or 'unknown'}")
        if self.enabled is not None and (enabled in ENABLED_STATES) != self.enabled:
            want = "enabled" if self.enabled else "not enabled"
            problems.append(f"expected {want}, is {enabled or 'not installed'}")
        return not problems, "; ".join(problems) or f"{active}, {enabled or 'n/a'}"


class FileCheck(_Model):
    exists: bool = True
    type: Literal["file", "directory", "symlink"] | None = Field(default=None)
    mode: str | None = None
    owner: str | None = None
    group: str | None = None
    contains: list[str] = Field(default_factory=list)

    @field_validator("mode")
    @classmethod
    def _octal(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"0?[0-7]{3,4}", value):
            raise ValueError(f"mode must be an octal string like \"0644\", got {value!r} (quote it in YAML)")
        return value

    @field_validator("contains")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        return _compile_all(value)

    def probe(self, path: str) -> Probe:
        q = shlex.quote(path)
        # Header line with tab-separated metadata; the content follows only when a regex needs it.
        script = (f"if [ -e {q} ] || [ -L {q} ]; then stat --printf='%a\\t%U\\t%G\\t%F\\n' -- {q}; "
                  f"else echo absent; exit 0; fi")
        if self.contains:
            script += f"; head -c {FILE_READ_LIMIT} -- {q}"
        return Probe(f"file {path}", "file", script, self._judge)

    def _judge(self, out: ProbeOutput) -> tuple[bool, str]:
        if out.exit_status != 0:
            return False, _failed_to_run(out)
        header, _, content = out.stdout.partition("\n")
        if header == "absent":
            return (not self.exists), "absent" if not self.exists else "expected to exist, is absent"
        if not self.exists:
            return False, "expected to be absent, exists"
        mode, owner, group, ftype = [*header.split("\t"), "", "", ""][:4]
        problems = self._metadata_problems(int(mode or "0", 8), owner, group, ftype)
        problems += [f"no line matches {p!r}" for p in self.contains if not re.search(p, content, re.M)]
        return not problems, "; ".join(problems) or f"{ftype}, {int(mode or '0', 8):04o}, {owner}:{group}"

    def _metadata_problems(self, mode: int, owner: str, group: str, ftype: str) -> list[str]:
        problems = []
        kinds = {"file": "regular", "directory": "directory", "symlink": "symbolic link"}
        if self.type and not ftype.startswith(kinds[self.type]):
            problems.append(f"expected a {self.type}, is {ftype}")
        if self.mode is not None and mode != int(self.mode, 8):
            problems.append(f"expected mode {int(self.mode, 8):04o}, is {mode:04o}")
        if self.owner is not None and owner != self.owner:
            problems.append(f"expected owner {self.owner}, is {owner}")
        if self.group is not None and group != self.group:
            problems.append(f"expected group {self.group}, is {group}")
        return problems


class CommandCheck(_Model):
    run: str | None = None
    exit_status: int = 0
    stdout: list[str] = Field(default_factory=list)
    stderr: list[str] = Field(default_factory=list)
    timeout: int = Field(default=DEFAULT_COMMAND_TIMEOUT, gt=0)

    @field_validator("stdout", "stderr")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        return _compile_all(value)

    def probe(self, name: str) -> Probe:
        command = self.run or name
        script = f"timeout {self.timeout} sh -c {shlex.quote(command)}"
        return Probe(f"command {name}", "command", script, self._judge)

    def _judge(self, out: ProbeOutput) -> tuple[bool, str]:
        problems = []
        if out.exit_status != self.exit_status:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:]
            problems.append(f"exit status {out.exit_status}, expected {self.exit_status}"
                            + (f" ({tail[0]})" if tail else ""))
        streams = (("stdout", self.stdout, out.stdout), ("stderr", self.stderr, out.stderr))
        for stream, patterns, text in streams:
            problems += [f"{stream} does not match {p!r}" for p in patterns if not re.search(p, text, re.M)]
        return not problems, "; ".join(problems) or f"exit {out.exit_status}"


class PackageCheck(_Model):
    installed: bool = True
    version: str | None = Field(default=None, description="regex searched in the installed version")

    @field_validator("version")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _compile_all([value])[0] if value is not None else None

    def probe(self, package: str) -> Probe:
        q = shlex.quote(package)
        script = (f"if command -v dpkg-query >/dev/null; then "
                  f"dpkg-query -W -f='${{db:Status-Status}}\\t${{Version}}\\n' -- {q} 2>/dev/null; "
                  f"elif command -v rpm >/dev/null; then "
                  f"rpm -q --qf 'installed\\t%{{VERSION}}-%{{RELEASE}}\\n' -- {q} 2>/dev/null; fi; true")
        return Probe(f"package {package}", "package", script, self._judge)

    def _judge(self, out: ProbeOutput) -> tuple[bool, str]:
        status, _, version = out.stdout.strip().partition("\t")
        installed = status == "installed"
        if installed != self.installed:
            return False, f"expected {'installed' if self.installed else 'absent'}, is {status or 'absent'}"
        if installed and self.version is not None and not re.search(self.version, version):
            return False, f"version {version} does not match {self.version!r}"
        return True, version if installed else "absent"


class KernelModuleCheck(_Model):
    loaded: bool = True

    def probe(self, module: str) -> Probe:
        name = module.replace("-", "_")
        # /proc/modules lists loadable modules; /sys/module also shows built-ins with parameters.
        script = (f"if grep -q '^{name} ' /proc/modules || [ -d /sys/module/{name} ]; "
                  f"then echo loaded; else echo absent; fi")
        return Probe(f"kernel_module {module}", "kernel_module", script, self._judge)

    def _judge(self, out: ProbeOutput) -> tuple[bool, str]:
        loaded = out.stdout.strip() == "loaded"
        state = "loaded" if loaded else "not loaded"
        if loaded != self.loaded:
            return False, f"expected {'loaded' if self.loaded else 'not loaded'}, is {state}"
        return True, state


class SysctlCheck(_Model):
    value: str | int | None = None
    matches: str | None = Field(default=None, description="regex searched in the value")

    @field_validator("matches")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _compile_all([value])[0] if value is not None else None

    def probe(self, key: str) -> Probe:
        # Read /proc/sys directly: the sysctl binary (procps) is not in every minimal image.
        path = "/proc/sys/" + key.replace(".", "/")
        return Probe(f"sysctl {key}", "sysctl", f"cat -- {shlex.quote(path)}", self._judge)

    def _judge(self, out: ProbeOutput) -> tuple[bool, str]:
        if out.exit_status != 0:
            return False, _failed_to_run(out)
        actual = " ".join(out.stdout.split())
        if self.value is not None and actual != " ".join(str(self.value).split()):
            return False, f"expected {self.value!r}, is {actual!r}"
        if self.matches is not None and not re.search(self.matches, actual):
            return False, f"{actual!r} does not match {self.matches!r}"
        return True, actual


class MountCheck(_Model):
    present: bool = True
    fstype: str | None = None
    source: str | None = Field(default=None, description="regex searched in the mounted device")
    options: list[str] = Field(default_factory=list)

    def probe(self, mountpoint: str) -> Probe:
        def judge(out: ProbeOutput) -> tuple[bool, str]:
            return self._judge(mountpoint, out)

        return Probe(f"mount {mountpoint}", "mount", "cat /proc/self/mounts", judge)

    def _judge(self, mountpoint: str, out: ProbeOutput) -> tuple[bool, str]:
        entry = find_mount(out.stdout, mountpoint)
        if entry is None:
            return (not self.present), "not mounted" if not self.present else "expected mounted, is not"
        if not self.present:
            return False, f"expected not mounted, is {entry[1]} from {entry[0]}"
        source, fstype, options = entry
        problems = []
        if self.fstype is not None and fstype != self.fstype:
            problems.append(f"expected fstype {self.fstype}, is {fstype}")
        if self.source is not None and not re.search(self.source, source):
            problems.append(f"source {source} does not match {self.source!r}")
        missing = [o for o in self.options if o not in options]
        if missing:
            problems.append(f"options {','.join(missing)} missing (has {','.join(options)})")
        return not problems, "; ".join(problems) or f"{fstype} from {source}"


def find_mount(mounts: str, mountpoint: str) -> tuple[str, str, list[str]] | None:
    """The last (topmost) /proc/self/mounts entry for a mountpoint: (source, fstype, options)."""
    found = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and _unescape_mount(fields[1]) == mountpoint:
            found = (_unescape_mount(fields[0]), fields[2], fields[3].split(","))
    return found


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


class BootOptions(_Model):
    """How the harness decides the guest has finished booting."""

    cloud_init: bool = Field(default=True, description="wait for cloud-init's final stage "
                             "(/run/cloud-init/result.json); require no errors")
    allow_degraded: bool = Field(default=False, description="accept `systemctl is-system-running` = degraded")


# The built-in artefact checks, in the order they run, by the name `hygiene.skip` uses; hygiene.py runs the
# function spelt the same with underscores (this list is its registry's only source).
HYGIENE_CHECKS = ("ssh-host-keys", "machine-id", "cloud-init-instance", "shell-history", "authorized-keys",
                  "apt-lists", "apt-caches", "var-log-size", "root-password", "core-dumps")


class HygieneOptions(_Model):
    """Tuning of the built-in artefact checks (see hygiene.py); they always run unless skipped by name."""

    max_var_log_mib: float = Field(default=10, ge=0)
    skip: list[str] = Field(default_factory=list)
    # authorized_keys files a customisation declares (a user and their public keys): not "baked in" by mistake.
    allowed_authorized_keys: list[str] = Field(default_factory=list)

    @field_validator("skip")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(HYGIENE_CHECKS))
        if unknown:
            raise ValueError(f"unknown hygiene checks {unknown}; known: {', '.join(HYGIENE_CHECKS)}")
        return value


class CheckSuite(_Model):
    """A whole checks file."""

    boot: BootOptions = Field(default_factory=BootOptions)
    hygiene: HygieneOptions = Field(default_factory=HygieneOptions)
    service: dict[str, ServiceCheck] = Field(default_factory=dict)
    file: dict[str, FileCheck] = Field(default_factory=dict)
    command: dict[str, CommandCheck] = Field(default_factory=dict)
    package: dict[str, PackageCheck] = Field(default_factory=dict)
    kernel_module: dict[str, KernelModuleCheck] = Field(default_factory=dict)
    sysctl: dict[str, SysctlCheck] = Field(default_factory=dict)
    mount: dict[str, MountCheck] = Field(default_factory=dict)

    @field_validator("file", "mount")
    @classmethod
    def _absolute(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must be an absolute path")
        return value

    @field_validator("kernel_module")
    @classmethod
    def _module_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"{name!r} is not a kernel module name")
        return value

    def probes(self) -> list[Probe]:
        """Every guest check as a probe, in file order within each kind."""
        groups: list[dict[str, Any]] = [self.service, self.file, self.command, self.package,
                                        self.kernel_module, self.sysctl, self.mount]
        return [check.probe(key) for group in groups for key, check in group.items()]


def parse_checks(text: str, source: str = "<checks>") -> CheckSuite:
    """Validate a checks document; every problem becomes one ConfigError naming the file and key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML", details=str(exc),
                          resolution="fix the YAML syntax at the position shown") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of check kinds, got {type(data).__name__}",
                          resolution="start the file with keys like `service:` or `file:`")
    # YAML turns unquoted keys like 0644 or yes into non-strings; checks are keyed by names.
    try:
        return CheckSuite.model_validate(data)
    except ValidationError as exc:
        lines = [f"{_location(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"invalid checks file {source}", details="\n".join(lines),
                          resolution=f"fix the keys named above in {source}; check kinds are: "
                          + ", ".join(sorted(CheckSuite.model_fields))) from exc


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def merged(base: CheckSuite, extra: CheckSuite) -> CheckSuite:
    """Two suites as one: each kind's checks together (extra's win on the same key), hygiene allowances added."""
    data = base.model_dump(mode="json")
    more = extra.model_dump(mode="json")
    for kind in ("service", "file", "command", "package", "kernel_module", "sysctl", "mount"):
        data[kind] = {**data[kind], **more[kind]}
    data["hygiene"]["allowed_authorized_keys"] = sorted(
        {*data["hygiene"]["allowed_authorized_keys"], *more["hygiene"]["allowed_authorized_keys"]})
    return CheckSuite.model_validate(data)


def load_checks(path: Path | None) -> CheckSuite:
    """Read a checks file; None gives the built-in checks only."""
    if path is None:
        return CheckSuite()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read checks file {path}", details=str(exc),
                          resolution="pass an existing file with --checks") from exc
    return parse_checks(text, str(path))
