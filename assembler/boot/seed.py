"""A per-run cloud-init NoCloud seed: a fresh SSH key for root, so no password or key lives in the image."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from assembler.run import require_tool, run

SEED_LABEL = "cidata"
GUEST_HOSTNAME = "assembler-boot"


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str


def generate_key(workdir: Path) -> SshKey:
    """A throw-away ed25519 key pair in the run's temporary directory."""
    require_tool("ssh-keygen", "generates the per-run SSH key for the boot test")
    private = workdir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "assembler-boot", "-f", private])
    return SshKey(private, private.with_suffix(".pub").read_text().strip())


def meta_data(instance_id: str, hostname: str = GUEST_HOSTNAME) -> str:
    """NoCloud meta-data; a new instance-id every run makes cloud-init treat the boot as a first boot."""
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=False)


def user_data(public_key: str) -> str:
    """#cloud-config giving root the run's key (works with cloud-init 22.4 on Debian 12).

    Two routes to the same key, because images differ: `users` names root explicitly (keys are
    added even though root exists), and top-level keys with `disable_root: false` are written to root's
    authorized_keys by cc_ssh without the "please login as" command prefix. No `ssh_pwauth`: the guest keeps
    the image's own sshd settings (what the test is about), and cloud-init does not rewrite them and restart
    sshd under the first login (no password exists to log in with anyway: root's is locked).
    """
    config = {
        "disable_root": False,
        "users": [{"name": "root", "lock_passwd": True, "ssh_authorized_keys": [public_key]}],
        "ssh_authorized_keys": [public_key],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, width=1 << 16)


def new_instance_id() -> str:
    return f"assembler-{uuid.uuid4().hex[:16]}"


def write_seed(workdir: Path, public_key: str, instance_id: str | None = None) -> Path:
    """Write meta-data and user-data and pack them into an ISO 9660 volume labelled `cidata`."""
    require_tool("xorriso", "packs the cloud-init NoCloud seed ISO")
    src = workdir / "seed"
    src.mkdir(exist_ok=True)
    (src / "meta-data").write_text(meta_data(instance_id or new_instance_id()))
    (src / "user-data").write_text(user_data(public_key))
    iso = workdir / "seed.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-volid", SEED_LABEL, "-joliet", "-rock",
         src / "user-data", src / "meta-data"])
    return iso
