"""Plugin registries (output formats, publish providers): the built-in plugins by name, then third-party
ones from an entry-point group, which may add names but never replace a built-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint
from typing import Any, TypeVar

from assembler.errors import ConfigError
from assembler.log import log

T = TypeVar("T")


def load_plugins(builtins: Mapping[str, T], points: Iterable[EntryPoint], kind: type[Any], *, noun: str,
                 needs: str) -> dict[str, T]:
    """`builtins` in their order, then each entry point's plugin (a class, instantiated, or an object) by name.

    `kind` is the runtime-checkable protocol a plugin must satisfy (typed `type[Any]`, not `type[T]`: mypy takes
    no protocol there); `noun` ("format") and `needs` (its members) word the errors. The caller discovers
    `points` (`entry_points(group=...)`), so tests can hand it a list.
    """
    plugins = dict(builtins)
    for point in sorted(points, key=lambda p: p.name):
        if point.name in plugins:
            log.warning("ignoring %s plugin %s (%s): a %s of that name exists", noun, point.name, point.value, noun)
            continue
        try:
            obj = point.load()
            plugin = obj() if isinstance(obj, type) else obj
        except Exception as exc:
            raise ConfigError(f"{noun} plugin {point.name} ({point.value}) failed to load", details=repr(exc),
                              resolution=f"fix or uninstall the package providing {point.value}") from exc
        if not isinstance(plugin, kind):
            raise ConfigError(f"{noun} plugin {point.name} ({point.value}) is not a {kind.__name__}",
                              resolution=f"it needs {needs}")
        plugins[point.name] = plugin
    return plugins
