"""Customisation without forking, end to end on debian-12 (the shared cache): one more layer, booted, each item
checked in the guest; `assembler diff` shows that one layer; a second customisation reuses the image's layers."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import Built, build_formats
from tests.helpers import REPO, cli

pytestmark = pytest.mark.e2e


def customisation(tmp_path: Path, swappiness: int) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@example", "-f",
                    str(tmp_path / "alice")], check=True)
    key = (tmp_path / "alice.pub").read_text().strip()
    path = tmp_path / f"customize-{swappiness}.yaml"
    path.write_text(yaml.safe_dump({
        "users": [{"name": "alice", "groups": ["adm", "sudo"], "ssh_keys": [key]}],
        "packages": ["jq"],
        "files": [{"path": "/etc/assembler-custom/site.conf", "content": "site = test\n", "mode": "0640"}],
        "sysctls": {"vm.swappiness": swappiness},
        "kernel_args": ["panic=30"],
        "services": {"mask": ["apt-daily.timer"]},
        "run": ["echo customised > /etc/assembler-customised"],
    }))
    return path


def image_dir(work: Path) -> Path:
    """debian-12 as it is, booted once (BIOS: the kernel arguments are in the grub.cfg both firmwares read), with
    one more file in its context: a rootfs key of its own, so its builds run in the engine (and reuse its layer
    cache) instead of taking whatever rootfs entry the shared cache holds for debian-12."""
    image = work / "debian-12-custom"  # its own engine tag: the shared debian-12 image stays as it is
    shutil.copytree(REPO / "Containerfiles" / "debian-12", image)
    config = yaml.safe_load((image / "image.yaml").read_text())
    config["boot"] |= {"firmware": "bios", "tpm": False}
    (image / "image.yaml").write_text(yaml.safe_dump(config))
    (image / "NOTES").write_text("a file no step copies: the engine's layers stay the same\n")
    return image


@dataclass(frozen=True)
class Variants:
    image: Path
    plain: Built
    customised: Built


@pytest.fixture(scope="module")
def variants(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Variants:
    """The image uncustomised, then customised, one after the other on the same engine and cache."""
    work = tmp_path_factory.mktemp("customize")
    image = image_dir(work)
    # A lock the archive has moved past is re-resolved by the first build (no engine cache) and replayed by the
    # next ones (labelled base): lock first, so that both builds replay the same lock and share the engine's layers.
    locked = cli("lock", str(image), "--cache-dir", str(shared_cache))
    assert locked.returncode == 0, locked.stderr[-3000:]
    before = (image / "Containerfile").read_bytes()
    plain = build_formats(str(image), work / "plain", shared_cache, ("raw",), "--no-boot-test")
    assert plain.manifest["lock"]["replayed"], plain.manifest["lock"]
    customised = build_formats(str(image), work / "out", shared_cache, ("raw",), "--customize",
                               str(customisation(work, 10)))
    assert (image / "Containerfile").read_bytes() == before  # the layer is added to the build's copy only
    return Variants(image, plain, customised)


def test_every_item_is_checked_in_the_booted_guest(variants: Variants) -> None:
    customised = variants.customised
    runs = customised.manifest["boot"]["runs"]
    assert runs and all(run["booted"] for run in runs)
    results = {r["name"]: r for run in runs for r in run["results"]}
    failed = [r for r in results.values() if not r["passed"]]
    assert not failed, failed
    for name in ("command user alice", "file /home/alice/.ssh/authorized_keys", "package jq",
                 "file /etc/assembler-custom/site.conf", "sysctl vm.swappiness", "command kernel argument panic=30",
                 "command apt-daily.timer masked"):
        assert name in results, sorted(results)
    hygiene = {c["name"]: c for c in customised.manifest["boot"]["hygiene"]}
    assert hygiene["authorized-keys"]["passed"]
    assert "/home/alice/.ssh/authorized_keys" in hygiene["authorized-keys"]["message"]


def test_diff_shows_the_customisation_as_one_layer(variants: Variants) -> None:
    proc = cli("diff", str(variants.plain.out), str(variants.customised.out), "--json", "--cache-dir",
               str(variants.plain.cache))
    report = json.loads(proc.stdout)
    statuses = [row["status"] for row in report["layers"]]
    assert statuses.count("added") == 1 and statuses[-1] == "added", report["layers"]
    assert all(status == "same" for status in statuses[:-1]), report["layers"]
    steps = report["steps"]
    assert {(s["side"], s["layer"]) for s in steps} == {("b", len(statuses) - 1)}, steps
    changed = {f["path"] for f in report["files"]}
    assert {"etc/assembler-customised", "etc/assembler-custom/site.conf", "usr/bin/jq",
            "etc/sysctl.d/90-assembler-customize.conf", "home/alice/.ssh/authorized_keys"} <= changed
    assert "jq" in {p["name"] for p in report["packages"]["added"]}


def test_another_customisation_reuses_the_images_layers(variants: Variants, tmp_path: Path) -> None:
    again = build_formats(str(variants.image), tmp_path / "out", variants.plain.cache, ("raw",), "--customize",
                          str(customisation(tmp_path, 20)), "--no-boot-test")
    ours = [layer["digest"] for layer in again.manifest["oci"]["layers"]]
    image = [layer["digest"] for layer in variants.plain.manifest["oci"]["layers"]]
    first = [layer["digest"] for layer in variants.customised.manifest["oci"]["layers"]]
    # The engine's layers carry build times: equal digests mean the image's steps were not run again.
    assert ours[:-1] == first[:-1] == image and ours[-1] != first[-1]
    assert again.manifest["disk"]["cmdline"].endswith(" panic=30")
    print(f"second customisation: {again.seconds:.1f} s")
