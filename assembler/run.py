"""The only place that starts a subprocess: run() waits on one (failures become ToolError), spawn() starts
one that runs on (tied to assembler's life, or a daemon on purpose)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from assembler.errors import MissingToolError, ToolError
from assembler.log import log
from assembler.space import FREE_SPACE_FIX

StrPath = str | Path

# Debian package that provides each tool, so a missing-tool error names the fix.
TOOL_PACKAGES: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sgdisk": "gdisk",
    "sfdisk": "fdisk",
    "grub-mkimage": "grub-common",
    "grub-bios-setup": "grub-pc-bin",
    "xorriso": "xorriso",
    "skopeo": "skopeo",
    "dockerd": "docker.io",
    "podman": "podman",
    "tar": "tar",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "setpriv": "util-linux",
}


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """For a forked worker: be SIGKILLed when `parent` dies (even by SIGKILL). Otherwise an orphaned worker
    waits on its pipe forever, holding the cache locks it inherited, and the next build waits on them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def spawn(cmd: Sequence[StrPath], *, output: int | IO[bytes] | None, env: Mapping[str, str] | None = None,
          tied: bool = True, new_session: bool = False) -> subprocess.Popen[bytes]:
    """A long-running child, the one Popen of assembler (run() is for commands it waits on).

    `tied` (a matrix worker's build, QEMU, the KVM probe): the kernel SIGKILLs it when assembler dies, even by
    SIGKILL, through `setpriv --pdeathsig` (no preexec_fn: the caller may have threads). Untied, in its own
    session (dockerd started for the user): it outlives assembler on purpose. `output` takes stdout and
    stderr together; None keeps the caller's; subprocess.PIPE gives a pipe to read."""
    argv = [str(c) for c in cmd]
    log.debug("$ %s", shlex.join(argv))
    return subprocess.Popen(_tied(argv) if tied else argv, env=dict(env) if env is not None else None,
                            stdin=subprocess.DEVNULL, stdout=output,
                            stderr=subprocess.STDOUT if output is not None else None, start_new_session=new_session)


def _tied(argv: list[str]) -> list[str]:
    """argv run so that the kernel SIGKILLs it when assembler dies (setpriv execs it: same pid). The tool is
    looked up first: a missing one is a MissingToolError, not setpriv's exit 127."""
    tool = argv[0] if os.sep in argv[0] and os.access(argv[0], os.X_OK) else require_tool(argv[0])
    return [require_tool("setpriv", "ties a child's life to assembler's (util-linux)"), "--pdeathsig", "KILL", "--",
            tool, *argv[1:]]


def require_tool(name: str, hint: str = "") -> str:
    """Return the tool's path or fail with the package that provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        raise MissingToolError(
            f"required tool not found: {name}",
            details=hint,
            resolution=f"run `make setup` (or `apt-get install {package}`)",
        )
    return path


def run(
    cmd: Sequence[StrPath],
    *,
    env: Mapping[str, str] | None = None,
    cwd: StrPath | None = None,
    capture: bool = True,
    input_bytes: bytes | None = None,
    check: bool = True,
    resolution: str = "",
    timeout: float | None = None,
    tied: bool = False,
    feed: Callable[[IO[bytes]], None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command; env entries are added to the current environment. `tied`: the command is SIGKILLed
    if this process dies first (for one whose finishing alone would be a visible effect, such as a push).
    `feed` writes the command's standard input on a thread of its own while the command runs (a stream too
    big to hold in memory or to write to a file first, such as a tar piped into mke2fs)."""
    argv = [str(c) for c in cmd]
    log.debug("$ %s", shlex.join(argv))
    full_env = {**os.environ, **env} if env else None
    try:
        if feed is not None:
            proc = _run_fed(_tied(argv) if tied else argv, feed, env=full_env, cwd=cwd, capture=capture,
                            timeout=timeout)
        else:
            proc = subprocess.run(
                _tied(argv) if tied else argv,
                env=full_env,
                cwd=cwd,
                input=input_bytes,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE if capture else None,
                check=False,
                timeout=timeout,
            )
    except FileNotFoundError as exc:
        raise MissingToolError(
            f"required tool not found: {argv[0]}",
            resolution=f"run `make setup` (or `apt-get install {TOOL_PACKAGES.get(argv[0], argv[0])}`)",
        ) from exc
    if check and proc.returncode != 0:
        stderr = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        stdout = (proc.stdout or b"").decode(errors="replace").strip().splitlines()
        tail = "\n".join((stderr or stdout)[-15:])
        if "No space left on device" in tail and not resolution:
            resolution = f"a filesystem is full: {FREE_SPACE_FIX}"
        raise ToolError(shlex.join(argv), proc.returncode, tail, resolution=resolution)
    return proc


def _run_fed(argv: list[str], feed: Callable[[IO[bytes]], None], *, env: Mapping[str, str] | None,
             cwd: StrPath | None, capture: bool, timeout: float | None) -> subprocess.CompletedProcess[bytes]:
    pipe = subprocess.PIPE if capture else None
    with subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=pipe, stderr=pipe) as proc:
        stdin, proc.stdin = proc.stdin, None  # the feeder owns it: communicate() must not close it under it
        assert stdin is not None
        failed: list[BaseException] = []

        def pump() -> None:
            try:
                feed(stdin)
            except BrokenPipeError:
                pass  # the command stopped reading: its exit status says why
            except BaseException as exc:  # handed to the caller's thread below
                failed.append(exc)
            finally:
                with contextlib.suppress(OSError):
                    stdin.close()

        feeder = threading.Thread(target=pump, name="run-feed", daemon=True)
        feeder.start()
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            raise
        finally:
            feeder.join(timeout=10)
        if failed:
            raise failed[0]
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def output(cmd: Sequence[StrPath], **kwargs: object) -> str:
    """Run a command and return its stdout as text."""
    proc = run(cmd, **kwargs)  # type: ignore[arg-type]
    return proc.stdout.decode(errors="replace")


def tool_version(name: str, args: Sequence[str] = ("--version",)) -> str:
    """First line of a tool's version output, or 'absent'; recorded in manifests and cache keys."""
    return _tool_version(name, tuple(args))


# Asked once per process: planning a build computes every phase's key, and several name the same tools
# (21 runs, 0.4 s of a no-change rebuild, before this).
@functools.cache
def _tool_version(name: str, args: tuple[str, ...]) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        return "absent"
    proc = subprocess.run([path, *args], capture_output=True, check=False)
    text = (proc.stdout or proc.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "unknown"
