"""The plugin registry helper behind formats and providers, fed injected entry points and a real installed one."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest

from assembler import formats, providers
from assembler.errors import ConfigError
from assembler.plugins import load_plugins
from assembler.providers.vsphere import VsphereProvider

GROUP = "assembler.tests"


@runtime_checkable
class Greeter(Protocol):
    def greet(self) -> str: ...


class Hello:
    def greet(self) -> str:
        return "hello"


HELLO = Hello()


def load(*points: tuple[str, str]) -> dict[str, Greeter]:
    builtins: dict[str, Greeter] = {"zulu": Hello(), "alpha": Hello()}
    return load_plugins(builtins, [EntryPoint(name, value, GROUP) for name, value in points], Greeter,
                        noun="greeter", needs="greet")


def test_builtins_first_in_their_order_then_plugins_by_name() -> None:
    loaded = load(("mike", f"{__name__}:Hello"), ("bravo", f"{__name__}:HELLO"))
    assert list(loaded) == ["zulu", "alpha", "bravo", "mike"]
    assert isinstance(loaded["mike"], Hello)  # a class is instantiated
    assert loaded["bravo"] is HELLO  # an object is taken as it is


def test_a_plugin_cannot_replace_a_builtin(caplog: pytest.LogCaptureFixture) -> None:
    builtin = load()["alpha"]
    with caplog.at_level(logging.WARNING, logger="assembler"):
        loaded = load(("alpha", f"{__name__}:HELLO"))
    assert loaded["alpha"] is not HELLO and type(loaded["alpha"]) is type(builtin)
    assert "ignoring greeter plugin alpha" in caplog.text


def test_broken_plugins_are_one_config_error_naming_the_package() -> None:
    with pytest.raises(ConfigError, match=r"greeter plugin x \(no_such_module:P\) failed to load") as err:
        load(("x", "no_such_module:P"))
    assert err.value.resolution == "fix or uninstall the package providing no_such_module:P"
    with pytest.raises(ConfigError, match=r"greeter plugin y \(json:dumps\) is not a Greeter") as err:
        load(("y", "json:dumps"))
    assert err.value.resolution == "it needs greet"


# A third-party provider as pip would install it: a module plus a dist-info with entry_points.txt.
PLUGIN_MODULE = f"""
from {VsphereProvider.__module__} import VsphereProvider


class CustomProvider(VsphereProvider):
    name = "custom"
"""


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "assembler_custom_plugin.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "assembler_custom_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: assembler-custom-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[assembler.providers]\ncustom = assembler_custom_plugin:CustomProvider\n"
                                           "[assembler.formats]\nbroken = assembler_custom_plugin:CustomProvider\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("assembler_custom_plugin", None)


@pytest.mark.usefixtures("installed_plugin")
def test_an_installed_distribution_s_entry_points_reach_both_registries() -> None:
    loaded = providers.load_providers()
    assert list(loaded)[:len(providers.ProviderName)] == [p.value for p in providers.ProviderName]
    assert type(loaded["custom"]).__name__ == "CustomProvider"
    # The same distribution's format entry point names a provider: the format registry refuses it.
    with pytest.raises(ConfigError, match=r"format plugin broken \(assembler_custom_plugin:CustomProvider\) "
                                          r"is not a FormatPlugin"):
        formats.load_formats()
