"""The `assembler` command: one typer app; each command lives in its own module."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from rich.traceback import Traceback
from typer.core import TyperGroup

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


class _Interrupted(BaseException):
    """Ctrl-C inside a command, on its way to main().

    typer turns a KeyboardInterrupt raised while a command runs into a silent exit 130, in standalone mode and
    out of it alike, so main() could never tell the user. typer's handlers know nothing of this class, so it
    passes them; a BaseException like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """


class _Group(TyperGroup):
    """The root command group: every command (subgroups too) runs inside its invoke()."""

    # ctx: the base class's click Context; Any because typer vendors its own click (typer._click, private)
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted from exc


app = typer.Typer(
    name="assembler",
    cls=_Group,
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


def _interrupted(exc: BaseException) -> NoReturn:
    if _state["debug"]:
        # The KeyboardInterrupt's own frames (where the command was when Ctrl-C came), not _Interrupted's.
        cause = exc.__cause__ if isinstance(exc, _Interrupted) and exc.__cause__ is not None else exc
        console.print(Traceback.from_exception(type(cause), cause, cause.__traceback__))
    console.print("[bold red]interrupted[/]")
    sys.exit(130)


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
    except (_Interrupted, KeyboardInterrupt) as exc:  # KeyboardInterrupt: Ctrl-C before typer took over
        _interrupted(exc)


if __name__ == "__main__":
    main()
