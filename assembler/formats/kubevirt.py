"""KubeVirt containerDisk: an OCI image whose single layer holds the disk under /disk/, owned by 107:107.

Built without a registry or a Containerfile: the plugin writes a reproducible docker-archive tar itself
(one layer, fixed times, canonical JSON config), keeps it in the output directory and loads it into the
container engine as `localhost/assembler/IMAGE-containerdisk:<first 12 hex of the image ID>`.
"""

from __future__ import annotations

import io
import re
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from assembler.errors import ConfigError
from assembler.formats.base import BasePlugin, ConvertRequest, Options, qemu_convert
from assembler.fsutil import canonical_json, sha256_bytes, sha256_file

QEMU_UID = 107  # the qemu user virt-launcher runs as; it must be able to read the disk
DISK_DIR = "disk"
COPY_BUFFER = 1 << 20


class KubevirtOptions(Options):
    disk_format: Literal["qcow2", "raw"] = Field(default="qcow2", description="the disk inside the image")
    compress: bool = Field(default=False, description="compress the qcow2 (smaller image, slower build)")
    repository: str = Field(default="localhost/assembler", pattern=r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")
    load: bool = Field(default=True, description="load the archive into the container engine")


def member(name: str, size: int, mtime: int, *, mode: int = 0o644, uid: int = 0,
           kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, mode, kind
    info.uid = info.gid = uid
    info.uname = info.gname = ""
    return info


def write_layer(layer: Path, disk: Path, mtime: int) -> None:
    """The containerDisk layer: disk/ and disk/NAME, both owned by the qemu user."""
    with tarfile.TarFile(layer, "w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER) as tar:
        tar.addfile(member(f"{DISK_DIR}/", 0, mtime, mode=0o755, uid=QEMU_UID, kind=tarfile.DIRTYPE))
        with disk.open("rb") as handle:
            tar.addfile(member(f"{DISK_DIR}/{disk.name}", disk.stat().st_size, mtime, uid=QEMU_UID), handle)


def image_config(diff_id: str, epoch: int, labels: dict[str, str], architecture: str = "amd64") -> bytes:
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return canonical_json({
        "architecture": architecture,  # a node pulls the containerDisk of its own architecture
        "os": "linux",
        "created": created,
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "assembler kubevirt containerDisk"}],
    })


def image_tag(repository: str, image_name: str, config_hex: str) -> str:
    name = image_name.lower()
    if not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*", name):
        raise ConfigError(f"image name {image_name!r} cannot be used in a container image reference",
                          resolution="use lowercase letters, digits, '.', '_' and '-'")
    return f"{repository}/{name}-containerdisk:{config_hex[:12]}"


def write_archive(dest: Path, layer: Path, layer_hex: str, config: bytes, tag: str, mtime: int) -> None:
    """A docker-archive (what `docker load` and `podman load` read): manifest.json, config, layer."""
    config_hex = sha256_bytes(config)
    layer_name = f"{layer_hex}/layer.tar"
    manifest = canonical_json([{"Config": f"{config_hex}.json", "RepoTags": [tag], "Layers": [layer_name]}])
    with tarfile.TarFile(dest, "w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER) as tar:
        tar.addfile(member("manifest.json", len(manifest), mtime), io.BytesIO(manifest))
        tar.addfile(member(f"{config_hex}.json", len(config), mtime), io.BytesIO(config))
        with layer.open("rb") as handle:
            tar.addfile(member(layer_name, layer.stat().st_size, mtime), handle)


def load_into_engine(archive: Path) -> str:
    from assembler import engine  # the engine adapter is only needed when loading

    client = engine.connect()
    return engine.load_archive(client, archive)


class KubevirtFormat(BasePlugin):
    name = "kubevirt"
    extension = "-containerdisk.tar"
    result_format = "qcow2"
    options_model: ClassVar[type[Options]] = KubevirtOptions

    def disk_path(self, req: ConvertRequest) -> Path:
        opts = self.options
        assert isinstance(opts, KubevirtOptions)
        return req.work / f"{req.image_name}.{opts.disk_format}"

    def commands(self, req: ConvertRequest) -> list[list[str]]:
        opts = self.options
        assert isinstance(opts, KubevirtOptions)
        flags = ("-c",) if opts.compress and opts.disk_format == "qcow2" else ()
        create_opts = "compat=1.1" if opts.disk_format == "qcow2" else ""
        return [qemu_convert(req.source, req.source_format, self.disk_path(req), opts.disk_format,
                             options=create_opts, flags=flags)]

    def inner_disk(self, req: ConvertRequest) -> tuple[Path, str]:
        opts = self.options
        assert isinstance(opts, KubevirtOptions)
        return self.disk_path(req), opts.disk_format

    def finish(self, req: ConvertRequest) -> dict[str, Any]:
        opts = self.options
        assert isinstance(opts, KubevirtOptions)
        layer = req.work / "layer.tar"
        write_layer(layer, self.disk_path(req), req.source_date_epoch)
        labels = {"org.opencontainers.image.title": req.image_name, **req.properties}
        layer_hex = sha256_file(layer)
        config = image_config(f"sha256:{layer_hex}", req.source_date_epoch, labels, req.architecture)
        tag = image_tag(opts.repository, req.image_name, sha256_bytes(config))
        write_archive(req.dest, layer, layer_hex, config, tag, req.source_date_epoch)
        layer.unlink()
        if opts.load:
            load_into_engine(req.dest)
        return {"image_ref": tag}
