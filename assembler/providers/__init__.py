"""Publish providers: an explicit registry keyed by ProviderName, plus third parties via entry points.

- `builtin_providers()` returns fresh plugin objects every call; nothing registers itself at import time and
  cloud SDKs are imported only inside the provider that uses them.
- `load_providers()` adds plugins from the entry-point group `assembler.providers` (a class or an object
  satisfying `Provider`; builtins cannot be overridden).
- `publish(out_dir, provider, options)` runs one provider over out/IMAGE/ and writes the receipt
  out/IMAGE/publish-PROVIDER.json atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from assembler.errors import ConfigError
from assembler.log import log
from assembler.providers.base import (
    BuildOutputs,
    NullProgress,
    Progress,
    Provider,
    ProviderName,
    PublishContext,
    PublishError,
    Receipt,
    write_receipt,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BuildOutputs",
    "Provider",
    "ProviderName",
    "PublishContext",
    "PublishError",
    "Receipt",
    "builtin_providers",
    "load_providers",
    "plan",
    "publish",
    "resolve",
]

ENTRY_POINT_GROUP = "assembler.providers"


def builtin_providers() -> dict[ProviderName, Provider]:
    # Imported here, not at the top: each pulls in its HTTP stack, and every CLI command imports this package.
    from assembler.providers.aws import AwsProvider
    from assembler.providers.azure import AzureProvider
    from assembler.providers.gcp import GcpProvider
    from assembler.providers.oci import OciProvider
    from assembler.providers.openstack import OpenStackProvider
    from assembler.providers.vsphere import VsphereProvider

    return {
        ProviderName.OCI: OciProvider(),
        ProviderName.AWS: AwsProvider(),
        ProviderName.AZURE: AzureProvider(),
        ProviderName.GCP: GcpProvider(),
        ProviderName.OPENSTACK: OpenStackProvider(),
        ProviderName.VSPHERE: VsphereProvider(),
    }


def load_providers() -> dict[str, Provider]:
    providers: dict[str, Provider] = {p.value: plugin for p, plugin in builtin_providers().items()}
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        if point.name in providers:
            log.warning("ignoring provider plugin %s (%s): a provider of that name exists", point.name, point.value)
            continue
        providers[point.name] = _load_entry_point(point.name, point.value, point.load)
    return providers


def _load_entry_point(name: str, target: str, load: Any) -> Provider:
    try:
        obj = load()
        plugin = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        raise ConfigError(f"provider plugin {name} ({target}) failed to load", details=repr(exc),
                          resolution=f"fix or uninstall the package providing {target}") from exc
    if not isinstance(plugin, Provider):
        raise ConfigError(f"provider plugin {name} ({target}) is not a Provider",
                          resolution="it needs name, formats, options_model, options, configure, plan, publish")
    return plugin


def resolve(name: ProviderName | str, options: Mapping[str, Any] | None = None) -> Provider:
    key = str(name.value if isinstance(name, ProviderName) else name)
    providers = load_providers()
    if key not in providers:
        raise ConfigError(f"unknown provider: {key}", resolution=f"use one of: {', '.join(providers)}")
    return providers[key].configure(options or {})


def plan(out_dir: Path, provider: ProviderName | str, options: Mapping[str, Any] | None = None) -> list[str]:
    """What publish would do, as human-readable steps (commands for vsphere); nothing is contacted."""
    plugin = resolve(provider, options)
    return plugin.plan(PublishContext(outputs=BuildOutputs.load(out_dir)))


def publish(out_dir: Path, provider: ProviderName | str, options: Mapping[str, Any] | None = None, *,
            progress: Progress | None = None) -> tuple[Receipt, Path]:
    """Publish out_dir's artefacts with one provider; returns the receipt and where it was written."""
    plugin = resolve(provider, options)
    ctx = PublishContext(outputs=BuildOutputs.load(out_dir), progress=progress or NullProgress())
    receipt = plugin.publish(ctx)
    return receipt, write_receipt(out_dir, receipt)
