"""`assembler publish IMAGE --provider P [provider options]`: upload out/IMAGE/ artefacts, write a receipt.

Provider options are flags derived from the built-in providers' options models (a field role_name is
--role-name, typed and described by the model), one help panel per group of providers taking them; only the
ones given are passed on, and the provider's options model rejects those it does not take. Third-party
providers take `--option KEY=VALUE`. Credentials are never options: each SDK reads its own environment/config
chain.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from typer.models import ParameterInfo

from assembler.cli import complete
from assembler.errors import ConfigError
from assembler.log import console
from assembler.providers.base import ProgressTask, ProviderName, option_flag

PROVIDERS = ", ".join(p.value for p in ProviderName)


class RichTask:
    def __init__(self, progress: Progress, label: str, total: int) -> None:
        self._progress = progress
        self._id = progress.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        self._progress.advance(self._id, amount)

    def close(self) -> None:
        self._progress.update(self._id, visible=True)


class RichProgress:
    """Upload bars on the console (stderr); stdout stays clean for --json."""

    def __init__(self) -> None:
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), console=console, transient=False)

    def task(self, label: str, total: int) -> ProgressTask:
        return RichTask(self.bars, label, total)


def _extra(pairs: list[str]) -> dict[str, str]:
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid --option {pair!r}", resolution="write --option KEY=VALUE")
        extra[key.replace("-", "_")] = value
    return extra


# --------------------------------------------------------------------------- provider options as flags

Command = TypeVar("Command", bound=Callable[..., Any])


@dataclass
class ProviderFlag:
    """One flag for every built-in provider's options-model field of that name (bucket: aws and gcp)."""

    name: str
    value_type: type  # what typer parses: bool, int, float, str, or a StrEnum of a Literal's values
    helps: dict[str, str] = field(default_factory=dict)  # provider -> the field's help

    @property
    def decls(self) -> tuple[str, ...]:
        flag = option_flag(self.name)
        # Both spellings: the CLI passes only what was given, so either can differ from the model's default.
        return (f"{flag}/--no-{flag[2:]}",) if self.value_type is bool else (flag,)

    @property
    def help(self) -> str:
        if len(self.helps) == 1:
            return next(iter(self.helps.values()))
        return "; ".join(f"{provider}: {text}" for provider, text in self.helps.items())

    def parameter(self) -> inspect.Parameter:
        option = typer.Option(None, *self.decls, help=escape(self.help), rich_help_panel=", ".join(self.helps),
                              show_default=False)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                 annotation=self.value_type | None)


def _value_type(name: str, info: FieldInfo) -> type:
    """The flag's type for a field. A Literal becomes a StrEnum (typer has long taken an Enum as choices, shown
    in help and completed by the shell; Literal only lately); a list is one comma-list string (its model
    splits it); anything else the model parses from a string."""
    annotation: Any = info.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    if get_origin(annotation) is Literal and all(isinstance(v, str) for v in get_args(annotation)):
        # mypy reads the functional Enum API as a call making a member, not a class.
        return cast(type, StrEnum(name, {value: value for value in get_args(annotation)}))
    return annotation if annotation in (bool, int, float) else str


def _same_type(a: type, b: type) -> bool:
    if issubclass(a, Enum) and issubclass(b, Enum):
        return [m.value for m in a] == [m.value for m in b]
    return a is b


def _field_help(name: str, info: FieldInfo) -> str:
    text = info.description or name.replace("_", " ")
    if info.is_required():
        return f"{text} (required)"
    default = info.get_default(call_default_factory=True)
    if default is None:
        return text
    if isinstance(default, bool):
        shown = option_flag(name) if default else f"--no-{option_flag(name)[2:]}"
    elif isinstance(default, list):
        shown = ",".join(map(str, default)) or "''"
    else:
        shown = str(default)
    return f"{text} (default: {shown})"


def provider_flags() -> list[ProviderFlag]:
    """The flags of every built-in provider's options, in provider then field order."""
    from assembler.providers import builtin_providers

    flags: dict[str, ProviderFlag] = {}
    for provider in builtin_providers().values():
        for name, info in provider.options_model.model_fields.items():
            value_type = _value_type(name, info)
            flag = flags.setdefault(name, ProviderFlag(name, value_type))
            if not _same_type(flag.value_type, value_type):
                # Providers disagree on the field's type: the flag takes a string and each model parses it.
                flag.value_type = str
            flag.helps[provider.name] = _field_help(name, info)
    return list(flags.values())


def with_provider_flags(command: Command) -> Command:
    """`command`, whose **kwargs receive the provider flags, with a signature listing them for typer."""
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in own} | {decl for p in own if isinstance(p.default, ParameterInfo)
                                     for decl in p.default.param_decls or ()}
    flags = provider_flags()
    for flag in flags:
        clash = {flag.name, option_flag(flag.name)} & taken
        if clash:
            raise TypeError(f"provider option {flag.name} clashes with publish's own {', '.join(sorted(clash))}")
    # Before the command's keyword-only parameters, so the help lists the provider panels ahead of theirs.
    cut = next((i for i, p in enumerate(own) if p.kind is inspect.Parameter.KEYWORD_ONLY), len(own))
    parameters = [*own[:cut], *(flag.parameter() for flag in flags), *own[cut:]]
    # typer reads parameters through inspect.signature, which honours __signature__ (mypy knows no such attribute).
    setattr(command, "__signature__", signature.replace(parameters=parameters))  # noqa: B010
    return command


@with_provider_flags
def publish(
    image: str = typer.Argument(..., autocompletion=complete.images,
        help="image name: publishes out/IMAGE/ (see --out)"),
    provider: str = typer.Option(..., "--provider", "-p", help=f"one of: {PROVIDERS} (or a plugin's name)"),
    out: Path = typer.Option(Path("out"), "--out", help="directory holding IMAGE/ (default ./out)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, contact nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the receipt (or plan) as JSON on stdout"),
    option: list[str] = typer.Option([], "--option", "-o", help="KEY=VALUE for any provider (repeatable)"),
    *,  # the provider flags (with_provider_flags) come here
    cache_from: str | None = typer.Option(None, "--cache-from", help="take IMAGE's outputs from this registry "
                                          "store into out/IMAGE first (a publish job on another machine than "
                                          "the build); every phase must be there", rich_help_panel="source"),
    fmt: list[str] = typer.Option(None, "--format", "-f", autocompletion=complete.formats,
                                  help="with --cache-from: the formats to take (default from image.yaml)",
                                  rich_help_panel="source"),
    cache: Path | None = typer.Option(None, "--cache-dir", help="with --cache-from: the local cache",
                                      rich_help_panel="source"),
    **provider_options: Any,
) -> None:
    """Publish IMAGE's build outputs with one provider; receipt in out/IMAGE/publish-PROVIDER.json."""
    from assembler import providers

    given = {k: v.value if isinstance(v, Enum) else v for k, v in provider_options.items() if v is not None}
    options = given | _extra(option)
    out_dir = out / image
    if cache_from:
        from assembler.cli.build_cmd import pull_outputs

        pull_outputs(image, out_dir, cache, cache_from, fmt)
    if dry_run:
        steps = providers.plan(out_dir, provider, options)
        if as_json:
            typer.echo(json.dumps(steps, indent=2))
        for step in steps:
            console.print(f"  {step}", markup=False)
        return
    progress = RichProgress()
    with progress.bars:
        receipt, path = providers.publish(out_dir, provider, options, progress=progress)
    for item in receipt.items:
        state = "[green]already there[/]" if item.reused else "[cyan]published[/]"
        console.print(f"  {item.kind:<14} {state} {item.id}")
    if receipt.noop:
        console.print(f"[bold green]already published[/]: nothing to do (receipt {path})")
    else:
        console.print(f"[bold green]published[/] {image} with {receipt.provider} (receipt {path})")
    if as_json:
        typer.echo(path.read_text())
