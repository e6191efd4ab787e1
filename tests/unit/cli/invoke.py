"""The CLI in-process (typer's CliRunner): a command's exit code, stdout (JSON) and stderr (the console)."""

from __future__ import annotations

from click.testing import Result
from typer.testing import CliRunner

from assembler.cli.main import app
from assembler.errors import AssemblerError


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def error_of(result: Result) -> AssemblerError:
    """The one error a command failed with. main() prints it (brief, then `fix:` and the resolution; see
    test_main.py); in-process, it is the exception the command raised."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, AssemblerError), result.exception
    return result.exception
