"""assembler as a container: `make container`, a build inside it gives the host build's bits, and a push.

The containerised build runs against the host's engine (its socket mounted) with a fresh cache holding only
the package store: it bootstraps the debian-12 base with the image's mmdebstrap, and flattens, assembles and
hashes the disk with the image's own tools and libraries. The reference is the session's host build of the
same lock (tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from assembler import __version__
from assembler.fsutil import sha256_file
from tests.e2e.conftest import Built, copy_store
from tests.helpers import REPO
from tests.integration.publish_servers import Server, registry  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e

TAG = f"localhost/assembler:{__version__}"


@pytest.fixture(scope="module")
def tool_image(shared_cache: Path) -> Iterator[str]:
    """`make container` (into the run's cache, so the test leaves nothing in the user's); removed at the end."""
    proc = subprocess.run(["make", "container"], cwd=REPO, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "ASSEMBLER_CACHE_DIR": str(shared_cache)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The script's last word is "TAG IMAGE_ID"; the set-up and the build print their own lines around it.
    built = re.findall(rf"^{re.escape(TAG)} (sha256:[0-9a-f]{{64}})$", proc.stdout, re.MULTILINE)
    assert built, proc.stdout[-3000:]
    image_id = built[-1]
    yield image_id
    subprocess.run(["docker", "rmi", "-f", TAG], capture_output=True, check=False)


def run_tool(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "run", "--rm", "--cap-add", "SYS_ADMIN", "--network", "host",
         "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", f"{workdir}:/work", TAG, *args],
        capture_output=True, text=True, timeout=3600)


def test_the_image_holds_the_host_tools_and_this_assembler(tool_image: str, tmp_path: Path) -> None:
    proc = run_tool(tmp_path, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "debian-12" in proc.stdout and "debian-13" in proc.stdout  # the built-in images are inside
    where = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python", TAG, "-c",
                            "import assembler; print(assembler.__version__, assembler.__file__)"],
                           capture_output=True, text=True, timeout=300)
    assert where.stdout.split() == [__version__, "/opt/assembler/assembler/__init__.py"], where.stderr
    tools = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", TAG, "-c",
         "for t in mmdebstrap qemu-img qemu-system-x86_64 mke2fs sfdisk mkfs.vfat grub-mkimage skopeo "
         "virt-inspector; do command -v $t >/dev/null || echo missing $t; done; mke2fs -V 2>&1 | head -1; "
         "ls /boot/vmlinuz-*"],
        capture_output=True, text=True, timeout=300)
    assert tools.returncode == 0 and "missing" not in tools.stdout, tools.stdout + tools.stderr
    assert "mke2fs 1.47." in tools.stdout and "/boot/vmlinuz-" in tools.stdout  # backports' mke2fs; a kernel


def test_a_build_in_the_container_gives_the_host_builds_raw_disk(tool_image: str, debian12: Built,
                                                                 tmp_path: Path) -> None:
    context = tmp_path / "debian-12"
    shutil.copytree(REPO / "Containerfiles" / "debian-12", context)
    shutil.copyfile(debian12.out / "debian-12.lock.json", context / "image.lock.json")
    copy_store(debian12.cache, tmp_path / "cache")
    proc = run_tool(tmp_path, "build", "/work/debian-12", "--locked", "--no-boot-test", "-f", "raw",
                    "--cache-dir", "/work/cache", "--output", "/work/out")
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    raw = next(item for item in manifest["outputs"] if item["format"] == "raw")
    assert raw["sha256"] == sha256_file(tmp_path / "out" / raw["path"])
    assert raw["sha256"] == sha256_file(debian12.output("raw"))
    assert (tmp_path / "cache" / "base").is_dir()  # the base was bootstrapped in the container, not copied


def test_the_image_is_pushed_with_the_oci_providers_code(tool_image: str, registry: Server) -> None:  # noqa: F811
    target = f"http://127.0.0.1:{registry.port}/tools/assembler"
    pushed = [subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "container"), "push",
                              target], capture_output=True, text=True, timeout=1800) for _ in range(2)]
    assert [p.returncode for p in pushed] == [0, 0], pushed[0].stderr[-3000:]
    refs = [p.stdout.strip().splitlines()[-1] for p in pushed]
    assert refs[0] == refs[1] and refs[0].startswith(f"127.0.0.1:{registry.port}/tools/assembler:{__version__}@")
    digest = refs[0].rsplit("@", 1)[1]
    resp = requests.get(f"http://127.0.0.1:{registry.port}/v2/tools/assembler/manifests/{__version__}",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=30)
    assert resp.status_code == 200 and resp.headers["Docker-Content-Digest"] == digest
    config = json.loads(resp.content)["config"]["digest"]
    assert config == tool_image  # the engine's image ID is the config's digest: the same image
