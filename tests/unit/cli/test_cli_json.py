"""Every command that reports something can say it as JSON (scripts and CI read stdout, people read stderr)."""

from __future__ import annotations

from typing import Any

import typer

from assembler.cli.main import app


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (`cache`)
            found |= _commands(command, f"{prefix}{name} ")
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_command_takes_json() -> None:
    commands = _commands(typer.main.get_command(app))
    assert {"build", "inspect", "diff", "cache ls", "cache verify", "cache gc", "lock", "matrix"} <= set(commands)
    missing = [name for name, command in commands.items()
               if not any("--json" in getattr(p, "opts", ()) for p in command.params)]
    assert missing == []
