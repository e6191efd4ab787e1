"""main(): an AssemblerError is one clear message and exit 1, a full disk is one too, and Ctrl-C is one line
and exit 130; usage errors and a command's own exit status are click's; anything else is a bug and keeps its
traceback."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer

from assembler.cli import list_cmd, main
from assembler.errors import ConfigError


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["assembler", *args])
    monkeypatch.setitem(main._state, "debug", False)
    with pytest.raises(SystemExit) as ended:
        main.main()
    return int(ended.value.code or 0)


def _raising(exc: BaseException) -> Callable[[], list[str]]:
    def fail() -> list[str]:
        raise exc

    return fail


def test_an_error_is_its_brief_details_and_fix_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(list_cmd, "list_images", _raising(
        ConfigError("bad image.yaml", details="line 3: unknown key", resolution="remove the key")))
    assert _main(monkeypatch, "list") == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: bad image.yaml", "line 3: unknown key", "fix: remove the key"]
    assert captured.out == ""


def test_debug_adds_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(list_cmd, "list_images", _raising(ConfigError("bad image.yaml", resolution="fix it")))
    assert _main(monkeypatch, "--debug", "list") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: bad image.yaml" in err and "fix: fix it" in err


def test_a_full_disk_anywhere_is_the_no_space_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    full = tmp_path / "disk.raw"
    monkeypatch.setattr(list_cmd, "list_images",
                        _raising(OSError(errno.ENOSPC, "No space left on device", str(full))))
    assert _main(monkeypatch, "list") == 1
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines at its width
    assert err.startswith(f"error: no space left on device while writing {full} (")
    assert "fix: free some space" in err


def test_another_os_error_is_a_bug_and_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["assembler", "list"])
    monkeypatch.setattr(list_cmd, "list_images", _raising(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):
        main.main()


def test_ctrl_c_is_exit_130_and_one_line_without_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # typer alone turns Ctrl-C into a silent exit 130: the user must still be told why the command stopped.
    monkeypatch.setattr(list_cmd, "list_images", _raising(KeyboardInterrupt()))
    assert _main(monkeypatch, "list") == 130
    captured = capsys.readouterr()
    assert captured.err == "interrupted\n"
    assert captured.out == ""


def test_ctrl_c_with_debug_shows_where_the_command_was(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(list_cmd, "list_images", _raising(KeyboardInterrupt()))
    assert _main(monkeypatch, "--debug", "list") == 130
    err = capsys.readouterr().err
    assert "Traceback" in err and "in fail" in err and "_Interrupted" not in err
    assert err.splitlines()[-1] == "interrupted"


def test_a_usage_error_keeps_clicks_message_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(monkeypatch, "no-such-command") == 2
    err = capsys.readouterr().err
    assert "Usage: " in err and "No such command 'no-such-command'" in err


def test_a_commands_own_exit_status_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(list_cmd, "list_images", _raising(typer.Exit(3)))
    assert _main(monkeypatch, "list") == 3


def test_no_command_shows_the_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code = _main(monkeypatch)
    out = capsys.readouterr().out
    assert code in (0, 2)  # click's no_args_is_help exit status changed across versions
    assert "Container-first VM image assembler" in out and "build" in out and "convert" in out
