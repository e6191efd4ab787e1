"""disk: the deterministic rootfs tar becomes a bootable raw disk (GPT, BIOS + UEFI, ext4 root)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from assembler import __version__, bom, customize, cyclonedx, disk, inputs, measured
from assembler.config import NATIVE_ARCH
from assembler.fsutil import sha256_file, sha256_tree
from assembler.inputs import other_locks
from assembler.packages.lockfile import LOCK_FILE
from assembler.phases.rootfs import LAYERS_INDEX, ROOTFS_INDEX, ROOTFS_TAR
from assembler.pipeline import Artefact, Phase
from assembler.rootfs import ancestry, layers
from assembler.sizes import parse_size
from assembler.store import Entry

RAW = "disk.raw"
UEFI_LAYOUT = "gpt-uefi"  # formats/layouts/gpt-uefi.yaml
BOM = "bom.spdx.json"
CYCLONEDX = "bom.cdx.json"
PCRS = "pcrs.json"
ENGINE_DIGESTS_NOTE = (
    "oci: the engine's image ID and layer digests differ between engine builds (the classic builder stamps "
    "layer files and history with the build time); they are in IMAGE.spdx.json beside the outputs but not "
    "in the disk, whose content depends only on the flattened rootfs"
)


def bom_files(index: disk.TarIndex) -> dict[str, bytes]:
    """The members the BOM reads (dpkg's database, os-release), at the offsets the disk's index found: what
    bom.read_tar_members gives, without a second scan of the tar."""
    wanted = [m for m in index.members if bom.wants_dpkg(m.name)]
    found = {m.name: data for m, data in disk.read_members(index, [m for m in wanted if m.kind == "file"])}
    return bom.with_links(found, {m.name: bom.link_target(m.name, m.linkname) for m in wanted
                                  if m.kind == "symlink"})


def layout_for(config_layout: str | None, overrides: dict[str, object]) -> disk.DiskLayout:
    path = disk.layout_path(config_layout) if config_layout else None
    return disk.load_layout(path, overrides or None)


class DiskPhase(Phase):
    name = "disk"
    kind = "disk"
    # 2: the CycloneDX document beside the SPDX one; 3: the BOM's download records lose an always-empty version;
    # 4: grub.cfg boots at once (timeout 0)
    version = 4

    def _layout(self) -> disk.DiskLayout:
        cfg, arch = self.ctx.spec.config.disk, self.ctx.spec.arch
        if arch == NATIVE_ARCH:
            return layout_for(cfg.layout, dict(cfg.layout_overrides))
        # No BIOS on other architectures: the UEFI-only layout unless the image names its own.
        return layout_for(cfg.layout or UEFI_LAYOUT, {**cfg.layout_overrides, "architecture": arch})

    def _size(self) -> int | None:
        size = self.ctx.disk_size or self.ctx.spec.config.disk.size
        return parse_size(size) if size else None

    def material(self) -> dict[str, Any]:
        cfg = self.ctx.spec.config
        return {
            "layout": self._layout().model_dump(mode="json"),
            "size": self._size(),
            "headroom": parse_size(cfg.disk.headroom),
            "cmdline": self._cmdline(),
            "secure_boot": cfg.secure_boot,
            # The PCR prediction is for the host's Secure Boot firmware variables: another store, another one.
            "pcr_firmware": self._firmware_vars_digest(),
            "source_date_epoch": cfg.source_date_epoch,
            "tools": disk.tool_versions(),
            "bom": bom.BOM_FORMAT,
            # The embedded BOM carries the whole build context (image.yaml and checks.yaml too, which the
            # rootfs key leaves out): an edit there must give a new disk, not reuse one with a stale BOM.
            "context": sha256_tree(self.ctx.spec.context, exclude=other_locks(self.ctx.spec.arch)),
        }

    def _cmdline(self) -> str:
        """The image's kernel command line and a customisation's kernel_args after it."""
        loaded = customize.of(self.ctx.spec)
        extra = loaded.custom.kernel_args if loaded else []
        # arm64's serial console is a PL011 (ttyAMA0; QEMU's virt machine, Azure Cobalt); listed last, it is
        # /dev/console where it exists, and the kernel skips it where it does not (Graviton's ttyS0).
        arch = ["console=ttyAMA0,115200n8"] if self.ctx.spec.arch == "arm64" else []
        return " ".join([self.ctx.spec.config.disk.cmdline, *arch, *extra]).strip()

    def _firmware_vars_digest(self) -> str | None:
        vars_file = measured.SECURE_BOOT_VARS
        # The prediction models x86 OVMF and the amd64 chain; arm64's Secure Boot disk is not predicted.
        wanted = self.ctx.spec.config.secure_boot and self.ctx.spec.arch == NATIVE_ARCH
        return sha256_file(vars_file) if wanted and vars_file.is_file() else None

    def artefacts(self, entry: Entry) -> list[Artefact]:
        name = self.ctx.spec.name
        found = [Artefact(entry.file(BOM), f"{name}.spdx.json", entry.key, "spdx"),
                 Artefact(entry.file(CYCLONEDX), f"{name}.cdx.json", entry.key, "cyclonedx")]
        if entry.meta.get("pcrs"):
            found.append(Artefact(entry.file(PCRS), f"{name}.pcrs.json", entry.key, "pcrs"))
        if "raw" in self.ctx.formats:
            found.append(Artefact(entry.file(RAW), f"{name}.raw", entry.key, "raw", entry.meta["disk"].get("sha256")))
        return found

    def manifest_fields(self, entry: Entry) -> dict[str, Any]:
        disk_meta = entry.meta["disk"]
        return {"disk": disk_meta, "nondeterministic": disk_meta.get("nondeterministic", [])}

    def execute(self, out: Path) -> dict[str, Any]:
        rootfs = self.input_entry("rootfs")
        cfg = self.ctx.spec.config
        # For the BOM and the disk: the index the flattener kept, else (an entry from before it) one header scan.
        tar = rootfs.file(ROOTFS_TAR)
        index = disk.read_index(tar, rootfs.file(ROOTFS_INDEX), rootfs.meta["rootfs"]["sha256"]) or disk.index_tar(tar)
        facts = self._bom_facts(rootfs, bom_files(index))
        bom.write_document(bom.spdx_document(facts), out / BOM)
        bom.write_document(cyclonedx.cyclonedx_document(facts), out / CYCLONEDX)
        # The engine's image ID and layer digests change with every engine build (the classic builder stamps
        # layer files and history with the build time) although the flattened rootfs does not; the embedded
        # copy leaves them out so the disk stays bit-for-bit reproducible. The rootfs digest identifies it.
        embedded = bom.spdx_document(replace(facts, oci_digest=None, layers=(), package_layers={},
                                             parent=replace(facts.parent, oci_digest=None) if facts.parent else None))
        result = disk.assemble_disk(
            rootfs.file(ROOTFS_TAR), out / RAW, self._layout(),
            seed=rootfs.meta["rootfs"]["sha256"], source_date_epoch=cfg.source_date_epoch,
            cmdline=self._cmdline(), size=self._size(), headroom=parse_size(cfg.disk.headroom),
            work_dir=out, extra_files=bom.embedded_files(embedded), index=index, secure_boot=cfg.secure_boot,
        )
        info = result.model_dump(mode="json")
        info["nondeterministic"] = [*info.get("nondeterministic", []), ENGINE_DIGESTS_NOTE]
        done = {"disk": {**info, "path": RAW, "sha256": sha256_file(out / RAW)}, "bom": BOM}
        if result.secure_boot and self._firmware_vars_digest() is not None:
            prediction = measured.predict(*disk.boot_chain(index, result.kernel_version), measured.SECURE_BOOT_VARS)
            (out / PCRS).write_text(prediction.model_dump_json(indent=2) + "\n")
            done["pcrs"] = PCRS
        return done

    def _bom_facts(self, rootfs: Entry, files: dict[str, bytes]) -> bom.BomInput:
        """What the SPDX bill of materials states, read once from the rootfs and its metadata."""
        meta = rootfs.meta
        index = rootfs.file(LAYERS_INDEX)
        return bom.bom_input(
            rootfs.file(ROOTFS_TAR), image=self.ctx.spec.name, rootfs_sha256=meta["rootfs"]["sha256"],
            source_date_epoch=self.ctx.spec.config.source_date_epoch,
            oci=meta["oci"],
            base_image=meta.get("base_image"),
            layers_index=layers.load_index(index) if index.is_file() else None,
            downloads=[d for d in meta.get("downloads", []) if d.get("status") != "skipped"],
            tools={**disk.tool_versions(), "assembler": __version__,
                   "engine": f'{meta["engine"]["name"]} {meta["engine"]["version"]}'},
            build_inputs=self._build_inputs(rootfs),
            files=files,
            parent=bom.ParentFacts(str(used["image"]), str(used["rootfs_sha256"]), int(used["layers"]),
                                   str(used["oci"])) if (used := meta.get("parent")) else None,
        )

    def _build_inputs(self, rootfs: Entry) -> dict[str, Any]:
        """What recreates the image, with what recreates each image it starts FROM nested in it; each with the
        lock its build used (the store's entry), else the committed one."""
        chain = [self.ctx.spec, *ancestry.ancestors(self.ctx.spec)]
        entries: list[Entry | None] = [rootfs]
        for _ in chain[1:]:
            above = entries[-1].meta.get("parent") if entries[-1] is not None else None
            entries.append(self.ctx.store.get(str(above["key"])) if isinstance(above, dict) else None)
        found: dict[str, Any] | None = None
        for spec, entry in reversed(list(zip(chain, entries, strict=True))):
            lock = entry.file(LOCK_FILE) if entry is not None and entry.meta.get("lock") else None
            found = inputs.build_inputs(spec, lock=lock, parent=found)
        assert found is not None
        return found
