"""Shell completion as a user installs it: the bash script typer prints, sourced in a real bash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the venv's bin/, where the `assembler` entry point is installed


def complete(*words: str) -> list[str]:
    # From a bash prompt, as a user runs it: typer picks the script by the shell it runs under (its parent
    # process), whatever follows the flag; `; true` keeps bash from exec'ing it and leaving that parent.
    shown = subprocess.run(["bash", "-c", f"{BIN / 'assembler'} --show-completion; true"], capture_output=True,
                           text=True, check=False)
    assert shown.returncode == 0, shown.stderr[-3000:]
    script = shown.stdout
    line = " ".join(words)
    probe = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _assembler_completion assembler; "
             'printf "%s\\n" "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [w for w in done.stdout.splitlines() if w]


@pytest.mark.parametrize(("words", "expected"), [
    (("assembler", "ca"), ["cache"]),
    (("assembler", "build", "debian-1"), ["debian-12", "debian-12-k8s-node", "debian-13", "debian-13-k8s-node"]),
    (("assembler", "build", "debian-13", "--format", "vm"), ["vmdk"]),
    (("assembler", "lock", "debian-13-k"), ["debian-13-k8s-node"]),
    # publish's provider flags are made from the options models at startup: the shell still sees them
    (("assembler", "publish", "debian-12", "--acc"), ["--account-url"]),
    (("assembler", "publish", "debian-12", "-p", "aws", "--method", ""), ["import", "ebs-direct"]),
])
def test_bash_completes_commands_images_formats_and_flags(words: tuple[str, ...], expected: list[str]) -> None:
    assert complete(*words) == expected
