"""The `assembler` command: one typer app; each command lives in its own module."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from assembler.cli import (
    boot_cmd,
    build_cmd,
    bundle_cmd,
    cache_cmd,
    convert_cmd,
    diff_cmd,
    inspect_cmd,
    list_cmd,
    lock_cmd,
    matrix_cmd,
    publish_cmd,
    rebuild_cmd,
    scan_cmd,
)
from assembler.errors import AssemblerError
from assembler.log import console, setup_logging
from assembler.space import no_space_error

app = typer.Typer(
    name="assembler",
    help="Container-first VM image assembler: Containerfile -> OCI image -> rootfs -> bootable disks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion [bash|zsh|fish]
)

_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="log every command; show tracebacks")) -> None:
    _state["debug"] = debug
    setup_logging(debug)


app.command("list")(list_cmd.list_images_cmd)
app.command("build")(build_cmd.build)
app.command("convert")(convert_cmd.convert)
app.command("inspect")(inspect_cmd.inspect)
app.command("scan")(scan_cmd.scan)
app.command("diff")(diff_cmd.diff)
app.command("publish")(publish_cmd.publish)
app.command("boot")(boot_cmd.boot)
app.command("rebuild")(rebuild_cmd.rebuild)
app.command("lock")(lock_cmd.lock)
app.command("bundle")(bundle_cmd.bundle)
app.command("matrix")(matrix_cmd.matrix)
app.add_typer(cache_cmd.app, name="cache")


def _fail(exc: AssemblerError) -> NoReturn:
    if _state["debug"]:
        console.print_exception()
    console.print(f"[bold red]error:[/] {exc.brief}")
    if exc.details:
        console.print(exc.details, markup=False)
    if exc.resolution:
        console.print(f"[bold]fix:[/] {exc.resolution}")
    sys.exit(1)


def main() -> None:
    try:
        app()
    except AssemblerError as exc:
        _fail(exc)
    except OSError as exc:
        full = no_space_error(exc)
        if full is None:
            raise
        _fail(full)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
