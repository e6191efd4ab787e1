"""The check language: parsing, validation errors, probe rendering, judging, batch framing, hygiene."""

from __future__ import annotations

import inspect
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from assembler.boot import hygiene
from assembler.boot.checks import (
    HYGIENE_CHECKS,
    CheckSuite,
    CommandCheck,
    FileCheck,
    MountCheck,
    PackageCheck,
    Probe,
    ProbeOutput,
    ServiceCheck,
    SysctlCheck,
    load_checks,
    parse_checks,
)
from assembler.boot.guest import batch_script, parse_batch
from assembler.boot.hygiene import LocalTree, run_hygiene
from assembler.errors import ConfigError
from tests.helpers import REPO

EXAMPLE = """
boot: {allow_degraded: true}
hygiene: {max_var_log_mib: 5, skip: [core-dumps]}
service:
  ssh: {active: true, enabled: true}
file:
  /etc/os-release: {exists: true, mode: "0644", owner: root, contains: ["^ID=debian$"]}
command:
  arch: {run: uname -m, stdout: ["^x86_64$"]}
package:
  linux-image-amd64: {version: "^6\\\\."}
kernel_module:
  virtio_net: {}
sysctl:
  kernel.hostname: {value: assembler-boot}
mount:
  /: {fstype: ext4, options: [rw]}
"""


def out(stdout: str = "", rc: int = 0, stderr: str = "") -> ProbeOutput:
    return ProbeOutput(rc, stdout, stderr)


def test_parse_full_example() -> None:
    suite = parse_checks(EXAMPLE, "example.yaml")
    assert suite.boot.allow_degraded and suite.boot.cloud_init
    assert suite.hygiene.max_var_log_mib == 5
    names = [p.name for p in suite.probes()]
    assert names == ["service ssh", "file /etc/os-release", "command arch", "package linux-image-amd64",
                     "kernel_module virtio_net", "sysctl kernel.hostname", "mount /"]


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text("")
    assert load_checks(path) == CheckSuite()
    assert load_checks(None).probes() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("service:\n  ssh: {activ: true}\n", "service.ssh.activ"),
        ("files:\n  /etc/x: {}\n", "files"),
        ("file:\n  etc/x: {}\n", "must be an absolute path"),
        ("file:\n  /etc/x: {mode: 644}\n", "file./etc/x.mode"),
        ("file:\n  /etc/x: {mode: '999'}\n", "octal"),
        ("command:\n  x: {stdout: ['(']}\n", "invalid regex"),
        ("kernel_module:\n  'a b': {}\n", "not a kernel module name"),
        ("hygiene: {skip: [nope]}\n", "unknown hygiene checks"),
        ("- a list\n", "must be a mapping"),
        ("service: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_checks_file_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_checks(path)
    assert str(path) in info.value.brief
    assert expected in str(info.value)
    assert info.value.resolution


def test_missing_checks_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read checks file"):
        load_checks(tmp_path / "absent.yaml")


def test_default_image_checks_file_is_valid() -> None:
    suite = load_checks(REPO / "Containerfiles" / "debian-12" / "checks.yaml")
    names = {p.name for p in suite.probes()}
    assert {"service ssh", "mount /", "mount /boot/efi", "file /etc/assembler-release"} <= names


def test_service_rendering_and_judging() -> None:
    probe = ServiceCheck(active=True, enabled=True).probe("ssh")
    assert probe.script == "systemctl show --property=ActiveState --property=UnitFileState -- ssh"
    assert probe.result(out("ActiveState=active\nUnitFileState=enabled\n")).passed
    assert probe.result(out("UnitFileState=alias\nActiveState=active\n")).passed
    failed = probe.result(out("ActiveState=failed\nUnitFileState=disabled\n"))
    assert not failed.passed
    assert "expected active, is failed" in failed.message and "is disabled" in failed.message
    absent = probe.result(out("ActiveState=inactive\nUnitFileState=\n"))  # no such unit
    assert not absent.passed and "is not installed" in absent.message


def test_file_rendering_quotes_paths() -> None:
    probe = FileCheck(contains=["x"]).probe("/etc/it's here")
    assert "'/etc/it'\"'\"'s here'" in probe.script
    assert "head -c" in probe.script
    assert "head -c" not in FileCheck().probe("/etc/x").script


def test_file_judging() -> None:
    check = FileCheck(mode="0644", owner="root", type="file", contains=[r"^ID=debian$"])
    probe = check.probe("/etc/os-release")
    good = probe.result(out("644\troot\troot\tregular file\nNAME=x\nID=debian\n"))
    assert good.passed, good.message
    bad = probe.result(out("600\tuser\troot\tdirectory\nID=ubuntu\n"))
    assert not bad.passed
    for fragment in ("expected mode 0644, is 0600", "expected owner root, is user", "expected a file",
                     "no line matches"):
        assert fragment in bad.message
    assert not probe.result(out("absent\n")).passed
    assert FileCheck(exists=False).probe("/x").result(out("absent\n")).passed
    assert not FileCheck(exists=False).probe("/x").result(out("644\troot\troot\tregular file\n")).passed


def test_command_rendering_and_judging() -> None:
    probe = CommandCheck(run="echo 'hi'", stdout=["^hi$"], timeout=7).probe("greet")
    assert probe.script == "timeout 7 sh -c 'echo '\"'\"'hi'\"'\"''"
    assert probe.result(out("hi\n")).passed
    failed = probe.result(out("", rc=127, stderr="sh: nope: not found"))
    assert not failed.passed and "exit status 127, expected 0 (sh: nope: not found)" in failed.message
    assert "stdout does not match" in failed.message
    # Without `run`, the key is the command (goss style).
    assert "sh -c 'uname -r'" in CommandCheck().probe("uname -r").script


def test_package_judging() -> None:
    probe = PackageCheck(version=r"^6\.1").probe("linux-image-amd64")
    assert "dpkg-query -W" in probe.script and "'linux-image-amd64'" not in probe.script
    assert probe.result(out("installed\t6.1.158-1\n")).passed
    assert "does not match" in probe.result(out("installed\t5.10\n")).message
    assert not probe.result(out("")).passed
    assert PackageCheck(installed=False).probe("x").result(out("not-installed\t\n")).passed


def test_sysctl_judging_normalises_whitespace() -> None:
    probe = SysctlCheck(value="4096 131072 6291456").probe("net.ipv4.tcp_rmem")
    assert probe.script == "cat -- /proc/sys/net/ipv4/tcp_rmem"
    assert probe.result(out("4096\t131072\t6291456\n")).passed
    assert not SysctlCheck(value=1).probe("net.ipv4.ip_forward").result(out("0\n")).passed
    assert not SysctlCheck(value=1).probe("a.b").result(out("", rc=1, stderr="No such file")).passed


MOUNTS = """/dev/vda1 / ext4 rw,relatime 0 0
/dev/vda15 /boot/efi vfat rw,relatime,fmask=0077 0 0
tmpfs /mnt/with\\040space tmpfs rw 0 0
"""


def test_mount_judging() -> None:
    assert MountCheck(fstype="ext4", options=["rw"]).probe("/").result(out(MOUNTS)).passed
    bad = MountCheck(fstype="ext4", options=["ro"]).probe("/boot/efi").result(out(MOUNTS))
    assert not bad.passed and "expected fstype ext4, is vfat" in bad.message and "ro missing" in bad.message
    assert MountCheck(fstype="tmpfs").probe("/mnt/with space").result(out(MOUNTS)).passed
    assert not MountCheck().probe("/srv").result(out(MOUNTS)).passed
    assert MountCheck(present=False).probe("/srv").result(out(MOUNTS)).passed


def test_probes_run_in_a_real_shell(tmp_path: Path) -> None:
    """The rendered probes and the batch framing work in a real POSIX sh (dash), not just on paper."""
    (tmp_path / "f").write_text("hello\nID=debian\n")
    suite = parse_checks(f"""
file:
  {tmp_path}/f: {{contains: ["^ID=debian$"]}}
  {tmp_path}/missing: {{exists: false}}
command:
  binary: {{run: "printf '\\\\001@@probe 9 9 9 9\\\\n'; echo err >&2; exit 3", exit_status: 3, stderr: [err]}}
  slow: {{run: "sleep 5", timeout: 1, exit_status: 124}}
sysctl:
  kernel.ostype: {{value: Linux}}
mount:
  /proc: {{fstype: proc}}
""")
    probes = suite.probes()
    proc = subprocess.run(["sh", "-s"], input=batch_script(probes).encode(), capture_output=True, check=True)
    outputs = parse_batch(proc.stdout, len(probes))
    assert sorted(outputs) == list(range(len(probes)))
    results = [probe.result(outputs[i]) for i, probe in enumerate(probes)]
    assert all(r.passed for r in results), [(r.name, r.message) for r in results]


def test_probes_run_side_by_side_and_report_in_order(tmp_path: Path) -> None:
    """Each of two probes waits for the other's mark: both pass only when they run at the same time."""
    def probes(where: Path) -> list[Probe]:
        where.mkdir()
        return [Probe(me, "command", f"touch {where}/{me}; i=0; while [ ! -e {where}/{other} ] && [ $i -lt 40 ]; "
                      f"do sleep 0.05; i=$((i+1)); done; test -e {where}/{other} && echo {me}",
                      lambda out: (out.exit_status == 0, "")) for me, other in (("a", "b"), ("b", "a"))]

    def batch(script: str) -> dict[int, ProbeOutput]:
        return parse_batch(subprocess.run(["sh", "-s"], input=script.encode(), capture_output=True,
                                          check=True).stdout, 2)

    outputs = batch(batch_script(probes(tmp_path / "together")))
    assert [outputs[0].exit_status, outputs[1].exit_status] == [0, 0]
    assert (outputs[0].stdout, outputs[1].stdout) == ("a\n", "b\n")
    # One at a time, the first waits out its loop alone and fails: the framing still says which is which.
    serial = batch(batch_script(probes(tmp_path / "alone"), concurrency=1))
    assert serial[0].exit_status == 1 and serial[1].stdout == "b\n"


def _batch_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_parse_batch_tolerates_truncation() -> None:
    data = _batch_tar({"./0.o": b"ab\n", "./0.e": b"", "./0.rc": b"0\n", "./1.o": b"x" * 5000, "./1.rc": b"3\n"})
    whole = parse_batch(data, 2)
    assert whole[0] == ProbeOutput(0, "ab\n", "") and whole[1] == ProbeOutput(3, "x" * 5000, "")
    cut = parse_batch(data[:3000], 2)  # inside probe 1's output: probe 0 whole, probe 1 absent
    assert cut == {0: ProbeOutput(0, "ab\n", "")}
    assert parse_batch(b"garbage\n", 1) == {}


def test_hygiene_on_a_local_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for sub in ("etc/ssh", "var/log", "var/lib/apt/lists/partial", "var/lib/cloud", "root"):
        (root / sub).mkdir(parents=True)
    (root / "etc/machine-id").write_text("")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "var/lib/apt/lists/lock").write_text("")
    clean = run_hygiene(LocalTree(root), CheckSuite().hygiene)
    assert all(r.passed for r in clean), [(r.name, r.message) for r in clean]

    (root / "etc/ssh/ssh_host_ed25519_key").write_text("key")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "root/.bash_history").write_text("ls\n")
    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages").touch()
    (root / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/x")
    (root / "var/log/big.log").write_bytes(b"x" * (2 << 20))
    (root / "etc/shadow").write_text("root:$y$j9T$abc:19000:0:99999:7:::\n")
    opts = parse_checks("hygiene: {max_var_log_mib: 1}").hygiene
    failed = {r.name for r in run_hygiene(LocalTree(root), opts) if not r.passed}
    assert failed == {"ssh-host-keys", "machine-id", "shell-history", "apt-lists", "cloud-init-instance",
                      "var-log-size", "root-password"}
    skipped = parse_checks("hygiene: {max_var_log_mib: 1, skip: [var-log-size]}").hygiene
    assert "var-log-size" not in {r.name for r in run_hygiene(LocalTree(root), skipped)}


def test_hygiene_names_are_the_registry_and_every_check_function_has_one(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert tuple(hygiene.REGISTRY) == HYGIENE_CHECKS
    assert [r.name for r in run_hygiene(LocalTree(tmp_path), CheckSuite().hygiene)] == list(HYGIENE_CHECKS)
    # A function shaped like a check that no name reaches would never run, nor could it be skipped.
    shaped = {fn for fn in vars(hygiene).values() if inspect.isfunction(fn) and fn.__module__ == hygiene.__name__
              and [p.annotation for p in inspect.signature(fn).parameters.values()] == ["Tree", "HygieneOptions"]
              and inspect.signature(fn).return_annotation == "tuple[bool, str]"}
    assert shaped == set(hygiene.REGISTRY.values())
    monkeypatch.setattr(hygiene, "HYGIENE_CHECKS", (*HYGIENE_CHECKS, "no-such-check"))
    with pytest.raises(LookupError, match="no-such-check"):
        hygiene._by_name()
