"""The KVM decision: the override, the host checks, the probe's verdict and its per-boot record (no QEMU runs:
the probe's "qemu" is a shell script standing in for the guest's behaviour)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from assembler import accel

Access = Callable[[str, int], bool]
QEMU = "/usr/bin/qemu-system-x86_64"


@pytest.fixture(autouse=True)
def fresh_answer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test decides anew, and leaves no answer behind for the rest of the run to reuse."""
    monkeypatch.delenv("ASSEMBLER_ACCEL", raising=False)
    accel.kvm_usable.cache_clear()
    yield
    accel.kvm_usable.cache_clear()


@pytest.fixture()
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host where KVM looks usable: /dev/kvm opens, QEMU and a kernel exist; the record goes to tmp_path.

    Returns the path of the per-boot record."""
    real_access: Access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path == "/dev/kvm" or real_access(path, mode))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: QEMU if name == "qemu-system-x86_64"
                        else real_which(name, *args, **kwargs))
    monkeypatch.setattr(accel, "_probe_kernel", lambda: "/boot/vmlinuz-test")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return accel._probe_cache()


def _probe_counting(monkeypatch: pytest.MonkeyPatch, answer: bool) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    def probe(qemu: str, kernel: str) -> bool:
        calls.append((qemu, kernel))
        return answer

    monkeypatch.setattr(accel, "_run_probe", probe)
    return calls


def _never_probe(qemu: str, kernel: str) -> bool:
    raise AssertionError("the probe must not run")


@pytest.mark.parametrize(("forced", "expected"), [("tcg", False), ("kvm", True), ("KVM", True), ("Tcg", False)])
def test_the_environment_overrides_the_probe(forced: str, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSEMBLER_ACCEL", forced)
    monkeypatch.setattr(accel, "_run_probe", _never_probe)
    assert accel.kvm_usable() is expected
    assert accel.accelerator() == ("kvm" if expected else "tcg")


def test_an_unknown_override_is_ignored(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSEMBLER_ACCEL", "hvf")
    calls = _probe_counting(monkeypatch, answer=True)
    assert accel.kvm_usable() is True
    assert calls == [(QEMU, "/boot/vmlinuz-test")]


def test_no_kvm_device_means_tcg_without_a_probe(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_access: Access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != "/dev/kvm" and real_access(path, mode))
    monkeypatch.setattr(accel, "_run_probe", _never_probe)
    assert accel.accelerator() == "tcg"
    assert not host.exists()  # nothing was probed, so nothing is recorded for this boot


def test_no_qemu_means_tcg(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None if name == "qemu-system-x86_64"
                        else real_which(name, *args, **kwargs))
    monkeypatch.setattr(accel, "_run_probe", _never_probe)
    assert accel.kvm_usable() is False


def test_no_kernel_to_probe_with_means_tcg(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_probe_kernel", lambda: None)
    monkeypatch.setattr(accel, "_run_probe", _never_probe)
    assert accel.kvm_usable() is False


@pytest.mark.parametrize("answer", [True, False])
def test_the_probe_runs_once_per_boot_and_its_answer_is_recorded(host: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 answer: bool) -> None:
    calls = _probe_counting(monkeypatch, answer)
    assert accel.kvm_usable() is answer
    assert accel.kvm_usable() is answer  # same process: the cached answer
    assert host.read_text() == ("kvm" if answer else "tcg")
    accel.kvm_usable.cache_clear()  # a later process of the same boot reads the record
    assert accel.kvm_usable() is answer
    assert len(calls) == 1
    assert sorted(p.name for p in host.parent.iterdir()) == [host.name]  # no temporary file left beside it


@pytest.mark.parametrize(("recorded", "expected"), [("kvm\n", True), ("tcg", False)])
def test_a_recorded_answer_is_trusted(host: Path, monkeypatch: pytest.MonkeyPatch, recorded: str,
                                      expected: bool) -> None:
    host.write_text(recorded)
    monkeypatch.setattr(accel, "_run_probe", _never_probe)
    assert accel.kvm_usable() is expected


def test_the_record_is_per_boot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert accel._probe_cache() == tmp_path / f"assembler-kvm-probe-{boot_id}"


def test_two_probers_finishing_together_both_record(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builds starting on a fresh boot probe at once: the one that writes last must not lose its temporary
    file to the other (a crash), nor let the other rename a half-written one into place (a wrong answer)."""
    _probe_counting(monkeypatch, answer=True)
    real_write = Path.write_text
    other_ran: list[bool] = []

    def write_then_other_finishes(self: Path, data: str, *args: object, **kwargs: object) -> int:
        written = real_write(self, data, *args, **kwargs)  # type: ignore[arg-type]
        if self.parent == host.parent and self != host and not other_ran:
            other_ran.append(True)
            assert accel.kvm_usable.__wrapped__() is True  # the other build: its whole write and rename
        return written

    monkeypatch.setattr(Path, "write_text", write_then_other_finishes)
    assert accel.kvm_usable() is True
    assert other_ran == [True]
    assert host.read_text() == "kvm"
    assert sorted(p.name for p in host.parent.iterdir()) == [host.name]


def _fake_qemu(tmp_path: Path, body: str) -> str:
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize(("body", "usable"), [
    ('echo "[    0.9] Kernel panic - not syncing: VFS: Unable to mount root fs"; exit 1', True),
    ("exit 0", True),  # -no-reboot: a guest that ends cleanly ran
    ('echo "qemu: could not access KVM kernel module"; exit 1', False),
])
def test_the_probe_reads_the_guests_end(tmp_path: Path, body: str, usable: bool) -> None:
    assert accel._run_probe(_fake_qemu(tmp_path, body), "/boot/vmlinuz-test") is usable


def test_a_guest_that_says_nothing_in_time_is_a_hanging_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_SECONDS", 0.2)
    # exec: the kill reaches the process holding the pipe, not a shell whose child would keep it open
    assert accel._run_probe(_fake_qemu(tmp_path, "exec sleep 60"), "/boot/vmlinuz-test") is False


def test_a_qemu_that_cannot_start_is_no_kvm(tmp_path: Path) -> None:
    assert accel._run_probe(str(tmp_path / "missing-qemu"), "/boot/vmlinuz-test") is False
