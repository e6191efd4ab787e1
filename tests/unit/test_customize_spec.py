"""Customisation files: validation (no passwords, real keys, paths inside the image directory), the layer's
script, its identity, and the guest checks it implies (tests/e2e/test_customize.py builds and boots one)."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from assembler import customize
from assembler.boot import hygiene
from assembler.boot.checks import CheckSuite, HygieneOptions, merged
from assembler.errors import ConfigError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBWq0y4b5l0RkZ1p1ZcJmMgLh2N2lqSY6pxw2T1v3Gfx alice@example"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "customize.yaml"
    path.write_text(text)
    return path


FULL = f"""
users: [{{name: alice, groups: [adm, sudo], ssh_keys: ["{KEY}"], sudo: true}}]
packages: [jq, "libc6:amd64"]
files:
  - {{path: /etc/site/site.conf, content: "a = 'b'\\n", mode: "0640", owner: root, group: adm}}
  - {{path: /etc/site/banner, source: files/banner}}
sysctls: {{vm.swappiness: 10, net.ipv4.ip_forward: "1"}}
kernel_args: [panic=30, "console=ttyS0,115200n8"]
services: {{enable: [ssh.service], mask: [apt-daily.timer]}}
run: ["echo done > /etc/done"]
"""


@pytest.fixture()
def loaded(tmp_path: Path) -> customize.Loaded:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "banner").write_bytes(b"\x00binary banner\xff")
    loaded = customize.for_image(tmp_path, str(write(tmp_path, FULL)))
    assert loaded is not None
    return loaded


def test_a_full_customisation_renders_a_valid_script(loaded: customize.Loaded, tmp_path: Path) -> None:
    script = customize.script(loaded.custom, loaded.data)
    (tmp_path / "c.sh").write_text(script)
    subprocess.run(["sh", "-n", str(tmp_path / "c.sh")], check=True)  # POSIX sh parses it
    assert "apt-get install -y -q --no-install-recommends jq libc6:amd64" in script
    assert "useradd -m -s /bin/bash -G adm,sudo alice" in script
    assert "systemctl mask apt-daily.timer" in script and "systemctl enable ssh.service" in script
    assert base64.b64encode(b"\x00binary banner\xff").decode() in script  # bytes survive, whatever they are
    assert script.rstrip().endswith("rm -rf /tmp/* /var/tmp/*")
    step = customize.containerfile_step(loaded.custom, loaded.data)
    assert step.startswith(f"\n{customize.MARKER}\nRUN ") and step.count("\nRUN ") == 1  # one layer
    encoded = re.search(r"printf %s (\S+) \| base64 -d > /tmp/customize.sh", step)
    assert encoded and base64.b64decode(encoded.group(1)).decode() == script


def test_identity_follows_the_declaration_and_the_files_bytes(loaded: customize.Loaded, tmp_path: Path) -> None:
    same = customize.for_image(tmp_path, str(tmp_path / "customize.yaml"))
    assert same is not None and same.digest == loaded.digest
    (tmp_path / "files" / "banner").write_bytes(b"another banner")
    changed = customize.for_image(tmp_path, "customize.yaml")
    assert changed is not None and changed.digest != loaded.digest
    assert customize.for_image(tmp_path, None) is None


def test_implied_guest_checks(loaded: customize.Loaded) -> None:
    suite = customize.checks(loaded.custom)
    assert suite.command["user alice"].stdout == [r"\badm\b", r"\bsudo\b"]
    assert suite.file["/home/alice/.ssh/authorized_keys"].mode == "0600"
    assert suite.file["/etc/site/site.conf"].mode == "0640" and suite.package["libc6"].installed
    assert suite.sysctl["vm.swappiness"].value == "10"
    assert re.search(suite.command["kernel argument panic=30"].stdout[0], "BOOT_IMAGE=/vmlinuz ro panic=30 quiet")
    assert not re.search(suite.command["kernel argument panic=30"].stdout[0], "panic=300")
    assert suite.service["ssh.service"].enabled
    assert suite.hygiene.allowed_authorized_keys == ["/home/alice/.ssh/authorized_keys"]
    both = merged(CheckSuite.model_validate({"file": {"/etc/os-release": {"exists": True}}}), suite)
    assert "/etc/os-release" in both.file and "/etc/site/site.conf" in both.file
    assert both.hygiene.allowed_authorized_keys == ["/home/alice/.ssh/authorized_keys"]


class Tree:
    def __init__(self, present: list[str]) -> None:
        self.present = present

    def glob(self, pattern: str) -> list[str]:
        return [p for p in self.present if re.fullmatch(pattern.replace("*", "[^/]+"), p)]


def test_hygiene_allows_declared_keys_only() -> None:
    tree = Tree(["/home/alice/.ssh/authorized_keys", "/root/.ssh/authorized_keys"])
    opts = HygieneOptions(allowed_authorized_keys=["/home/alice/.ssh/authorized_keys"])
    passed, message = hygiene.authorized_keys(tree, opts)  # type: ignore[arg-type]
    assert not passed and "/root/.ssh/authorized_keys" in message and "alice" not in message
    passed, message = hygiene.authorized_keys(Tree(["/home/alice/.ssh/authorized_keys"]), opts)  # type: ignore[arg-type]
    assert passed and "declared" in message


@pytest.mark.parametrize(("text", "fragment"), [
    ("users: [{name: bob, password: hunter2}]", "password"),
    ("users: [{name: bob, ssh_keys: ['not a key']}]", "ssh_keys"),
    ("users: [{name: Bob}]", "name"),
    ("packages: ['jq; rm -rf /']", "packages"),
    ("files: [{path: /etc/x, content: a, source: b}]", "exactly one of content and source"),
    ("files: [{path: /etc/../x, content: a}]", "'..'"),
    ("files: [{path: relative, content: a}]", "path"),
    ("sysctls: {vm.swappiness: '1; reboot'}", "sysctl.d line"),
    ("kernel_args: ['quiet; rm']", "kernel_args"),
    ("services: {mask: ['a b']}", "mask"),
    ("colour: blue", "colour"),
    ("users: [", "not valid YAML"),
])
def test_bad_input_is_one_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        customize.load(write(tmp_path, text))
    assert fragment in f"{caught.value.brief} {caught.value.details}"


def test_file_sources_stay_inside_the_image_directory(tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    (tmp_path / "secret").write_text("outside")
    path = write(tmp_path, "files: [{path: /etc/x, source: ../secret}]")
    with pytest.raises(ConfigError, match="is not a file of"):
        customize.for_image(tmp_path / "image", str(path))


def test_a_customisation_too_large_for_one_layer(tmp_path: Path) -> None:
    big = customize.Customization.model_validate({"files": [{"path": "/big", "content": "x" * 200_000}]})
    with pytest.raises(ConfigError, match="too large for one layer"):
        customize.containerfile_step(big, {"/big": b"x" * 200_000})
