"""Free-space estimates, the up-front check and the ENOSPC error (figures faked here; the real thing is in
tests/integration/test_no_space.py)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from assembler import space
from assembler.cli import main as cli_main


def test_estimate_counts_outputs_twice_but_not_the_boot_logs() -> None:
    store, out = space.estimate(["rootfs", "disk", "convert", "convert", "boot"])
    assert store == int(4.1 * space.GIB)
    assert out == 4 * space.GIB


def test_paths_on_one_filesystem_add_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda path: 3 * space.GIB)
    space.check_free_space({tmp_path / "cache": 2 * space.GIB})
    space.check_free_space({tmp_path / "out": 2 * space.GIB})
    with pytest.raises(space.NoSpaceError) as info:
        space.check_free_space({tmp_path / "cache": 2 * space.GIB, tmp_path / "not/yet/made": 2 * space.GIB})
    assert "3.0 GiB free, about 4.0 GiB needed" in info.value.brief
    assert "--cache-dir" in info.value.resolution


def test_enospc_becomes_a_clear_error_and_others_do_not(tmp_path: Path) -> None:
    full = space.no_space_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.raw")))
    assert full is not None and str(tmp_path / "x.raw") in full.brief and "GiB free now" in full.brief
    assert space.no_space_error(OSError(errno.EACCES, "Permission denied")) is None


def test_cli_prints_the_enospc_error_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def app() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/disk.raw")

    monkeypatch.setattr(cli_main, "app", app)
    with pytest.raises(SystemExit) as info:
        cli_main.main()
    assert info.value.code == 1
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "no space left on device while writing /somewhere/disk.raw" in printed
