"""`assembler publish`'s provider flags come from the providers' options models: every field is a flag, typed and
described by its model, and what a flag is given is what the model holds."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import typer
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

import assembler.providers as providers
from assembler.cli.main import app
from assembler.cli.publish_cmd import with_provider_flags
from assembler.providers import ProviderName, builtin_providers
from assembler.providers.base import option_flag
from tests.helpers import REPO

# Fields whose model validates more than the type: a value it takes, and what it holds for it.
SAMPLES: dict[str, tuple[str, Any]] = {
    "registry": ("127.0.0.1:5000/team", "127.0.0.1:5000/team"),
    "gallery_version": ("1.2.3", "1.2.3"),
    "artifacts": ("qcow2,ova", ["qcow2", "ova"]),
}


def _bare(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    return annotation


def sample(name: str, info: FieldInfo) -> tuple[list[str], Any]:
    """Arguments setting the field to a value other than its default, and the value the model should hold."""
    flag, default = option_flag(name), info.get_default(call_default_factory=True)
    if name in SAMPLES:
        given, expected = SAMPLES[name]
        return [flag, given], expected
    kind = _bare(info.annotation)
    if kind is bool:
        return [flag if not default else f"--no-{flag[2:]}"], not default
    if get_origin(kind) is Literal:
        choice = next(c for c in get_args(kind) if c != default)
        return [flag, choice], choice
    if kind is int:
        return [flag, str((default or 0) + 1)], (default or 0) + 1
    if kind is float:
        return [flag, str((default or 0) + 0.5)], (default or 0) + 0.5
    return [flag, f"{name}-x"], f"{name}-x"


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """The (provider, options) of every `publish --dry-run`, which then contacts nothing and reads no outputs."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def plan(out_dir: Path, provider: str, options: dict[str, Any]) -> list[str]:
        calls.append((provider, dict(options)))
        return []

    monkeypatch.setattr(providers, "plan", plan)
    return calls


@pytest.mark.parametrize("name", list(ProviderName))
def test_every_option_of_every_provider_is_a_flag_that_lands_in_its_model(
        name: ProviderName, planned: list[tuple[str, dict[str, Any]]]) -> None:
    model = builtin_providers()[name].options_model
    args, expected = [], {}
    for field, info in model.model_fields.items():
        given, expected[field] = sample(field, info)
        args += given
    result = CliRunner().invoke(app, ["publish", "demo", "--provider", name.value, "--dry-run", *args])
    assert result.exit_code == 0, result.output
    (provider, options), = planned
    assert provider == name.value and set(options) == set(model.model_fields)
    held = providers.resolve(name, options).options.model_dump()
    assert held == expected


def test_only_the_flags_given_are_passed_on(planned: list[tuple[str, dict[str, Any]]]) -> None:
    result = CliRunner().invoke(app, ["publish", "demo", "-p", "aws", "--dry-run", "--method", "ebs-direct",
                                      "-o", "volume-type=io2"])
    assert result.exit_code == 0, result.output
    assert planned == [("aws", {"method": "ebs-direct", "volume_type": "io2"})]
    assert type(planned[0][1]["method"]) is str  # the flag's choice, not typer's enum member


def test_flag_help_is_the_field_description_under_the_providers_taking_it() -> None:
    command = typer.main.get_command(app).commands["publish"]  # type: ignore[attr-defined]
    params = {p.name: p for p in command.params}
    for provider in builtin_providers().values():
        for field, info in provider.options_model.model_fields.items():
            assert info.description, f"{provider.name}.{field} has no description: its flag would have no help"
            param = params[field]
            assert option_flag(field) in param.opts
            assert provider.name in param.rich_help_panel.split(", ")
            assert info.description.split("[")[0] in param.help
    assert params["bucket"].rich_help_panel == "aws, gcp"
    assert params["bucket"].help.startswith("aws: S3 bucket") and "gcp: GCS bucket" in params["bucket"].help


def test_every_publish_flag_in_the_docs_exists() -> None:
    command = typer.main.get_command(app).commands["publish"]  # type: ignore[attr-defined]
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
    used: set[str] = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        # `assembler publish ...` commands, with their backslash-continued lines
        text = doc.read_text().replace("\\\n", " ")
        for line in re.findall(r"assembler publish [^\n`]*", text):
            used |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line.split("#")[0]))
    assert {"--registry", "--no-containerdisk", "--method", "--account-url", "--disk-format", "--folder"} <= used
    assert used - known == set()


def test_a_provider_option_may_not_shadow_a_publish_option() -> None:
    def command(out: str = typer.Option("x", "--bucket"), **provider_options: Any) -> None: ...

    with pytest.raises(TypeError, match="provider option bucket clashes with publish's own --bucket"):
        with_provider_flags(command)
