"""Base recipes, the mmdebstrap command, and the reproducible docker-archive."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from assembler.errors import ConfigError
from assembler.rootfs import bootstrap
from assembler.rootfs.bootstrap import (
    BaseRecipe,
    base_archive,
    effective,
    load_recipe,
    mmdebstrap_command,
    recipe_key,
)

EPOCH = 1_747_699_200


def make_rootfs(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("./etc/os-release")
        info.size, info.mtime = 5, EPOCH
        tar.addfile(info, io.BytesIO(b"hello"))
    return path


def test_shipped_recipe_loads() -> None:
    recipe = load_recipe("debian-12")
    assert load_recipe(bootstrap.ROOTFS_DIR / "debian-12") == recipe
    assert (recipe.suite, recipe.variant) == ("bookworm", "minbase")
    assert recipe.tag == "localhost/assembler/base:debian-12"
    assert recipe.mirror == "http://deb.debian.org/debian"


def test_recipe_rejects_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nsource_date_epoch: 1\nsuit: bookworm\n")
    with pytest.raises(ConfigError, match="invalid base recipe"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("no-such-base")


def test_mirror_env_override_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = BaseRecipe(name="t", source_date_epoch=EPOCH)
    before = recipe_key(recipe)
    snapshot = "http://snapshot.debian.org/archive/debian/20250520T000000Z"
    monkeypatch.setenv(bootstrap.MIRROR_ENV, snapshot)
    assert effective(recipe).mirror == snapshot
    assert recipe_key(recipe) != before
    argv = mmdebstrap_command(effective(recipe), Path("o.tar"))
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in argv


def test_mmdebstrap_command_golden() -> None:
    recipe = BaseRecipe(name="t", source_date_epoch=EPOCH, packages=("vim", "less"))
    assert mmdebstrap_command(recipe, Path("/o/r.tar")) == [
        "mmdebstrap", "--variant=minbase", "--architectures=amd64", "--components=main", "--format=tar",
        '--customize-hook=rm -f "$1/etc/resolv.conf"',
        '--customize-hook=echo localhost > "$1/etc/hostname" && chmod 0644 "$1/etc/hostname"',
        "--customize-hook=printf '127.0.0.1\\tlocalhost\\n::1\\t\\tlocalhost ip6-localhost ip6-loopback\\n"
        "ff02::1\\t\\tip6-allnodes\\nff02::2\\t\\tip6-allrouters\\n' > \"$1/etc/hosts\"",
        '--aptopt=Acquire::Check-Valid-Until "false"',
        '--customize-hook=mv "$1/etc/apt/apt.conf.d/99mmdebstrap" "$1/etc/apt/apt.conf.d/00assembler-build-only"',
        "--include=vim,less", "bookworm", "/o/r.tar",
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]


def test_base_archive_is_reproducible_and_well_formed(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs.tar")
    first = base_archive(rootfs, "localhost/assembler/base:t", EPOCH, tmp_path / "a.tar")
    second = base_archive(rootfs, "localhost/assembler/base:t", EPOCH, tmp_path / "b.tar")
    assert first == second
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config_bytes = tar.extractfile(manifest["Config"]).read()  # type: ignore[union-attr]
        layer = tar.extractfile(manifest["Layers"][0]).read()  # type: ignore[union-attr]
        assert all(m.mtime == EPOCH and m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert first == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    assert layer == rootfs.read_bytes()
    assert manifest["RepoTags"] == ["localhost/assembler/base:t"]
    config = json.loads(config_bytes)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["created"] == "2025-05-20T00:00:00Z"
    other = base_archive(rootfs, "localhost/assembler/base:t", EPOCH + 1, tmp_path / "c.tar")
    assert other != first


def test_a_labelled_base_keeps_its_layer_and_gets_its_own_image_id(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs.tar")
    plain = base_archive(rootfs, "localhost/assembler/base:t", EPOCH, tmp_path / "a.tar")
    one = bootstrap.labelled_archive(tmp_path / "a.tar", tmp_path / "one.tar", {bootstrap.LOCK_LABEL: "1" * 64})
    again = bootstrap.labelled_archive(tmp_path / "a.tar", tmp_path / "again.tar", {bootstrap.LOCK_LABEL: "1" * 64})
    other = bootstrap.labelled_archive(tmp_path / "a.tar", tmp_path / "two.tar", {bootstrap.LOCK_LABEL: "2" * 64})
    assert one == again and len({plain, one, other}) == 3
    assert bootstrap.labelled_image_id(tmp_path / "a.tar", {bootstrap.LOCK_LABEL: "1" * 64}) == one
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "again.tar").read_bytes()
    with tarfile.open(tmp_path / "one.tar") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(manifest["Config"]).read())  # type: ignore[union-attr]
        layer = tar.extractfile(manifest["Layers"][0]).read()  # type: ignore[union-attr]
    assert config["config"]["Labels"] == {bootstrap.LOCK_LABEL: "1" * 64}
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == config["rootfs"]["diff_ids"][0]
    assert manifest["RepoTags"] == ["localhost/assembler/base:t"]


class _Session:
    """What ensure_base asks of a package session: the mirror state, and a prefetch."""

    layer = ""
    proxy_url = "http://127.0.0.1:9"

    def state(self, urls: list[str]) -> list[object]:
        return []

    def prefetch(self, layer: str) -> None:
        pass


def test_two_builds_on_one_cache_bootstrap_the_base_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel builds sharing a cache: the second waits for the first's bootstrap and uses its entry."""
    import threading
    import time

    from assembler.packages.lockfile import Lock, write_lock

    calls: list[str] = []

    def slow_build(recipe: BaseRecipe, entry: Path, session: object) -> None:
        calls.append(entry.name)
        time.sleep(0.5)  # long enough for the other thread to reach the entry while this one makes it
        entry.mkdir(parents=True)
        (entry / "image-id").write_text("sha256:" + "a" * 64 + "\n")
        write_lock(entry / bootstrap.BASE_LOCK, Lock(image="base"))

    monkeypatch.setattr(bootstrap, "_build_entry", slow_build)
    monkeypatch.setattr(bootstrap.engine, "image_id", lambda client, tag: "sha256:" + "a" * 64)
    recipe = load_recipe("debian-12")
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(
        bootstrap.ensure_base(None, recipe, tmp_path, _Session())))  # type: ignore[arg-type]
        for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and len(results) == 2
    assert [r.image_id for r in results] == ["sha256:" + "a" * 64] * 2  # type: ignore[attr-defined]
