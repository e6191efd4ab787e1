"""One error family: every failure a user can hit says what broke and how to fix it."""

from __future__ import annotations


class AssemblerError(Exception):
    """A failure with a short summary, optional details and the resolution a user should try."""

    def __init__(self, brief: str, details: str = "", resolution: str = "") -> None:
        super().__init__(brief)
        self.brief = brief
        self.details = details
        self.resolution = resolution

    def __str__(self) -> str:
        parts = [self.brief]
        if self.details:
            parts.append(self.details)
        if self.resolution:
            parts.append(f"Fix: {self.resolution}")
        return "\n".join(parts)


class ToolError(AssemblerError):
    """An external command failed; carries the command and the tail of its stderr."""

    def __init__(self, cmd: str, returncode: int, stderr_tail: str, resolution: str = "") -> None:
        super().__init__(
            f"command failed (exit {returncode}): {cmd}",
            details=stderr_tail,
            resolution=resolution or "read the output above; rerun with --debug for the full log",
        )
        self.cmd = cmd
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class MissingToolError(AssemblerError):
    """A required host tool is not installed."""


class EngineError(AssemblerError):
    """The container engine is absent, down, or a build in it failed."""


class ConfigError(AssemblerError):
    """The user's input (image name, config file, option) is invalid."""


class DiskError(AssemblerError):
    """Disk assembly failed (size, layout, bootloader)."""


class BootError(AssemblerError):
    """The guest did not boot or a check failed."""


class PublishError(AssemblerError):
    """An upload, a download or a cloud API call failed (network, server, permissions)."""


class ScanError(AssemblerError):
    """The scan phase found vulnerabilities at or above the image's scan.fail_on."""
