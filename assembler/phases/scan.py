"""scan: the disk's packages (from the BOM it embeds) against an OSV advisory database (image.yaml scan:).

Keyed by the disk and the database's digest (for a URL, of the copy fetched into the cache): a new feed, or
a new disk, scans again; the same pair is reused. With `fail_on`, a finding at least that severe fails the
build before the boot test, with the report in out/IMAGE/ to read.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

from assembler import bom, scan
from assembler.config import ScanConfig
from assembler.errors import ScanError
from assembler.fsutil import atomic_path, write_json
from assembler.log import console
from assembler.phases.disk import BOM
from assembler.pipeline import Artefact, Phase
from assembler.scan_db import Database, open_database
from assembler.store import Entry

REPORT = "scan.json"


class ScanPhase(Phase):
    name = "scan"
    kind = "scan"
    version = 1

    def _config(self) -> ScanConfig:
        cfg = self.ctx.spec.config.scan
        assert cfg is not None, "ScanPhase is planned only for images with scan: in image.yaml"
        return cfg

    @functools.cached_property
    def _db(self) -> Database:
        """Fetched (a URL) or hashed (a path) once per build, a whole feed being ~100 MB: the key, the report
        and the manifest name the same bytes, the ones scanned."""
        return open_database(self._config().db, self.ctx.store.root, base=self.ctx.spec.context)

    def material(self) -> dict[str, Any]:
        return {"db": self._db.sha256, "fail_on": self._config().fail_on}

    def artefacts(self, entry: Entry) -> list[Artefact]:
        return [Artefact(entry.file(REPORT), f"{self.ctx.spec.name}.scan.json", entry.key, "scan")]

    def manifest_fields(self, entry: Entry) -> dict[str, Any]:
        return {"scan": entry.meta["scan"]}

    def execute(self, out: Path) -> dict[str, Any]:
        cfg, name = self._config(), self.ctx.spec.name
        doc = bom.load_spdx(self.input_entry("disk").file(BOM))
        result = scan.scan_packages(bom.package_list(doc), bom.release_of(doc).get("VERSION_ID"), self._db.load(),
                                    self._db.provenance())
        write_json(out / REPORT, result.as_dict(cfg.fail_on))
        counts = ", ".join(f"{n} {s}" for s, n in result.counts().items()) or "none"
        console.print(f"  scan {name}: {len(result.findings)} finding(s) in {result.packages} packages ({counts})")
        failing = result.failing(cfg.fail_on)
        if failing:
            published = self.ctx.output_dir / f"{name}.scan.json"  # the store discards a failed phase's files
            with atomic_path(published) as tmp:
                shutil.copyfile(out / REPORT, tmp)
            worst = "\n".join(f"  {f.severity:<8} {f.package} {f.version}: {f.advisory} (fixed in "
                              f"{f.fixed or 'no version yet'})" for f in failing[:20])
            raise ScanError(f"{len(failing)} finding(s) in {name} at or above {cfg.fail_on}", details=worst,
                            resolution=f"read {published}; upgrade the packages (`assembler lock {name} --update`) "
                                       "or raise scan.fail_on in image.yaml")
        return {"scan": {"report": REPORT, "counts": result.counts(), "fail_on": cfg.fail_on,
                         "db": self._db.source, "db_sha256": self._db.sha256, "db_fetched": self._db.fetched,
                         "findings": len(result.findings)}}
