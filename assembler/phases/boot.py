"""boot: boot a copy of the disk in QEMU (BIOS, UEFI, UEFI with Secure Boot) and run the image's checks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from assembler import boot, customize, measured
from assembler.boot.runner import firmwares_of_arch
from assembler.config import NATIVE_ARCH
from assembler.errors import BootError
from assembler.fsutil import atomic_path, sha256_file
from assembler.phases.disk import PCRS
from assembler.pipeline import Artefact, Phase
from assembler.store import META, Entry


class BootPhase(Phase):
    name = "boot"
    kind = "boot"
    version = 1

    def _checks_file(self) -> Path | None:
        path = self.ctx.spec.context / self.ctx.spec.config.boot.checks
        return path if path.is_file() else None

    def _firmwares(self) -> list[str]:
        """image.yaml's firmwares, as this build's architecture has them (an arm64 build boots UEFI)."""
        declared = boot.firmwares(self.ctx.spec.config.boot.firmware)
        return [str(f) for f in declared] if self.ctx.spec.arch == NATIVE_ARCH else firmwares_of_arch(
            self.ctx.spec.arch, declared)

    def material(self) -> dict[str, Any]:
        checks = self._checks_file()
        cfg = self.ctx.spec.config.boot
        return {
            "firmware": self._firmwares(),
            "tpm": cfg.tpm,
            "disk_buses": list(cfg.disk_buses),
            "checks": sha256_file(checks) if checks else None,
            "builtin_checks": boot.BUILTIN_CHECKS_VERSION,
            **({"customize": loaded.digest} if (loaded := customize.of(self.ctx.spec)) else {}),
        }

    def artefacts(self, entry: Entry) -> list[Artefact]:
        """Console logs, JUnit XML and the report, under their own names."""
        return [Artefact(path, path.name, entry.key) for path in sorted(entry.path.glob("*"))
                if path.name != META]

    def manifest_fields(self, entry: Entry) -> dict[str, Any]:
        return {"boot": entry.meta["boot"]}

    def execute(self, out: Path) -> dict[str, Any]:
        disk = self.input_entry("disk")
        cfg = self.ctx.spec.config.boot
        report = boot.boot_test(
            disk.file("disk.raw"), firmwares=self._firmwares(), checks_file=self._checks_file(),
            timeout=cfg.timeout, keep=False, out_dir=out, disk_buses=list(cfg.disk_buses), tpm=cfg.tpm,
            prediction=measured.load_prediction(disk.file(PCRS)) if disk.meta.get("pcrs") else None,
            extra_checks=customize.checks(loaded.custom) if (loaded := customize.of(self.ctx.spec)) else None,
            arch=self.ctx.spec.arch,
        )
        published = self.ctx.output_dir
        if not report.passed:
            # The store discards a failed phase's directory: the logs a user needs go to out/ first.
            for path in sorted(out.glob("*")):
                with atomic_path(published / path.name) as tmp:
                    shutil.copyfile(path, tmp)
        # What the user reads names the image and the files in out/ (a pass links them there), never the
        # store's temporary directory, which is gone when the phase ends.
        boot.print_summary(_in_output(report, self.ctx.spec.name, published))
        if not report.passed:
            raise BootError(f"boot test failed for {self.ctx.spec.name}", details=report.failure_summary(),
                            resolution=f"read the console logs and junit.xml in {published}; rerun "
                                       "`assembler boot` on the disk to debug")
        return {"boot": _relative_paths(report.as_dict())}


def _in_output(report: boot.BootReport, image: str, published: Path) -> boot.BootReport:
    runs = [run.model_copy(update={name: str(published / Path(path).name) for name, path in
                                   (("console_log", run.console_log), ("event_log", run.event_log)) if path})
            for run in report.runs]
    junit = str(published / Path(report.junit).name) if report.junit else None
    return report.model_copy(update={"disk": image, "runs": runs, "junit": junit})


def _relative_paths(report: dict[str, Any]) -> dict[str, Any]:
    """The report names files in the store's temporary directory; out/ holds them under the same names."""
    for run in report.get("runs", []):
        for name in ("console_log", "event_log"):
            if run.get(name):
                run[name] = Path(run[name]).name
    if report.get("junit"):
        report["junit"] = Path(report["junit"]).name
    report.pop("disk", None)
    return report
