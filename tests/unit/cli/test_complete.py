"""The completion functions behind image and format arguments (tests/unit/cli/test_completion.py runs them
through bash as a user's shell would)."""

from __future__ import annotations

from pathlib import Path

import pytest

import assembler.formats as formats
from assembler.cli import complete


def test_images_complete_from_containerfiles() -> None:
    assert complete.images("debian-13") == ["debian-13", "debian-13-k8s-node"]
    assert complete.images("no-such") == []


def test_formats_complete_with_the_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "qcow2-small.yaml").write_text("format: qcow2\noptions: {compress: true}\n")
    monkeypatch.setattr(formats, "formats_dir", lambda: tmp_path)
    assert complete.formats("qcow") == ["qcow2", "qcow2-small"]
    assert complete.formats("") == sorted(complete.formats(""))
    assert {"raw", "vmdk", "vhd", "ova", "gce", "kubevirt"} <= set(complete.formats(""))
