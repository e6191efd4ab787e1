"""The boot engine's failure paths with real QEMU and libguestfs: a disk that never boots, interrupts,
and hygiene checks on a tiny ext4 image with planted problems."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assembler.boot import CheckSuite, boot_disk, boot_test
from assembler.boot.checks import parse_checks
from assembler.boot.hygiene import check_artifact
from assembler.errors import BootError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def processes_mentioning(marker: str) -> list[int]:
    """PIDs whose command line mentions `marker` (a test's unique temp path): stray QEMUs would."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "qemu-system" in cmdline:
            pids.append(int(entry.name))
    return pids


def blank_disk(tmp_path: Path) -> Path:
    disk = tmp_path / "blank.raw"
    with disk.open("wb") as handle:
        handle.truncate(64 << 20)
    return disk


@pytest.mark.parametrize(("firmware", "timeout", "expected"),
                         [("bios", 60, "No bootable device"), ("uefi", 30, "BdsDxe")])
def test_blank_disk_fails_with_console_tail_and_leaves_no_qemu(
    tmp_path: Path, firmware: str, timeout: float, expected: str
) -> None:
    disk = blank_disk(tmp_path)
    console_log = tmp_path / f"console-{firmware}.log"
    started = time.monotonic()
    with pytest.raises(BootError) as info:
        boot_disk(disk, fmt="raw", firmware=firmware, checks=CheckSuite(),  # type: ignore[arg-type]
                  timeout=timeout, keep=False, console_log=console_log)
    assert time.monotonic() - started < timeout + 30
    assert firmware in info.value.brief
    assert expected in info.value.details, info.value.details
    assert info.value.resolution
    assert console_log.stat().st_size > 0
    assert processes_mentioning(str(tmp_path)) == []
    # The artefact itself was never written: the guest only ever saw an overlay.
    with disk.open("rb") as handle:
        assert not any(handle.read(1 << 20))


CHILD = """
import signal, sys
# As in a terminal: a harness started in the background (`cmd &` without job control) hands its children
# SIGINT ignored, and Python then keeps it ignored; Ctrl-C is what this test is about.
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from assembler.boot import CheckSuite, boot_disk
boot_disk(Path(sys.argv[1]), fmt="raw", firmware="bios", checks=CheckSuite(), timeout=300, keep=False,
          console_log=Path(sys.argv[2]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_qemu(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT) and SIGTERM during a boot end the run and take QEMU with it."""
    disk = blank_disk(tmp_path)
    console_log = tmp_path / "console.log"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(disk), str(console_log)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_mentioning(str(tmp_path)), "QEMU never started"
        time.sleep(2)
        child.send_signal(sig)
        assert child.wait(timeout=30) != 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert processes_mentioning(str(tmp_path)) == []


def ext4_image(tmp_path: Path, name: str, plant: bool) -> Path:
    tree = tmp_path / f"{name}-tree"
    for sub in ("etc/ssh", "var/log", "var/lib/apt/lists/partial", "var/cache/apt/archives", "var/lib/cloud",
                "root", "home/user"):
        (tree / sub).mkdir(parents=True)
    (tree / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (tree / "etc/machine-id").write_text("")
    if plant:
        (tree / "etc/ssh/ssh_host_rsa_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        (tree / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        (tree / "home/user/.bash_history").write_text("sudo -i\n")
        (tree / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
        (tree / "var/cache/apt/pkgcache.bin").write_text("x")
        (tree / "var/lib/cloud/instances/i-1").mkdir(parents=True)
        (tree / "var/log/syslog").write_bytes(os.urandom(3 << 20))
    image = tmp_path / f"{name}.raw"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(image), "32M"], check=True)
    return image


def test_hygiene_detects_planted_problems_and_passes_clean(tmp_path: Path) -> None:
    opts = parse_checks("hygiene: {max_var_log_mib: 2}").hygiene
    dirty, seconds = check_artifact(ext4_image(tmp_path, "dirty", plant=True), "raw", opts)
    failed = {r.name: r.message for r in dirty if not r.passed}
    assert set(failed) == {"ssh-host-keys", "machine-id", "shell-history", "apt-lists", "apt-caches",
                           "cloud-init-instance", "var-log-size"}, failed
    assert "/etc/ssh/ssh_host_rsa_key" in failed["ssh-host-keys"]
    assert "/home/user/.bash_history" in failed["shell-history"]
    assert seconds > 0
    clean, _ = check_artifact(ext4_image(tmp_path, "clean", plant=False), "raw", opts)
    assert all(r.passed for r in clean), [(r.name, r.message) for r in clean]


def test_boot_test_records_an_unreadable_disk_and_a_failed_boot(tmp_path: Path) -> None:
    """boot_test never raises for a bad disk: it reports, writes JUnit and the console log."""
    out = tmp_path / "out"
    report = boot_test(blank_disk(tmp_path), ["bios"], None, timeout=20, keep=False, out_dir=out)
    assert not report.passed
    assert [r.name for r in report.hygiene] == ["read artifact"]
    [run] = report.runs
    assert not run.booted and run.error and "did not bring up SSH" in run.error
    assert (out / "junit.xml").is_file() and (out / "console-bios.log").is_file()
    assert processes_mentioning(str(tmp_path)) == []
