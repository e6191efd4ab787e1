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
from assembler.plugins import load_plugins
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
    builtins: dict[str, Provider] = {p.value: plugin for p, plugin in builtin_providers().items()}
    return load_plugins(builtins, entry_points(group=ENTRY_POINT_GROUP), Provider, noun="provider",
                        needs="name, formats, options_model, options, configure, plan, publish")


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
