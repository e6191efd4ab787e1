"""`assembler publish IMAGE --provider P [provider options]`: upload out/IMAGE/ artefacts, write a receipt.

Provider options are typer options grouped in one help panel per provider; only the ones given are passed
on, and the provider's options model rejects those it does not take. Third-party providers take
`--option KEY=VALUE`. Credentials are never options: each SDK reads its own environment/config chain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from assembler.cli import complete
from assembler.errors import ConfigError
from assembler.log import console
from assembler.providers.base import ProgressTask, ProviderName

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


def publish(
    image: str = typer.Argument(..., autocompletion=complete.images,
        help="image name: publishes out/IMAGE/ (see --out)"),
    provider: str = typer.Option(..., "--provider", "-p", help=f"one of: {PROVIDERS} (or a plugin's name)"),
    out: Path = typer.Option(Path("out"), "--out", help="directory holding IMAGE/ (default ./out)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, contact nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the receipt (or plan) as JSON on stdout"),
    option: list[str] = typer.Option([], "--option", "-o", help="KEY=VALUE for any provider (repeatable)"),
    registry: str | None = typer.Option(None, help="HOST\\[:PORT]\\[/REPO] of the registry", rich_help_panel="oci"),
    insecure: bool | None = typer.Option(None, "--insecure", help="plain-HTTP registry", rich_help_panel="oci"),
    containerdisk: bool | None = typer.Option(None, "--containerdisk/--no-containerdisk",
                                              help="push the KubeVirt containerDisk", rich_help_panel="oci"),
    artifacts: str | None = typer.Option(None, help="disk formats as OCI artefacts (comma list)",
                                         rich_help_panel="oci"),
    bucket: str | None = typer.Option(None, help="S3 / GCS bucket", rich_help_panel="aws, gcp"),
    region: str | None = typer.Option(None, help="AWS region (default: the SDK's chain)", rich_help_panel="aws"),
    method: str | None = typer.Option(None, help="import (S3 + ImportSnapshot) or ebs-direct",
                                      rich_help_panel="aws"),
    role_name: str | None = typer.Option(None, help="VM Import service role (default vmimport)",
                                         rich_help_panel="aws"),
    container: str | None = typer.Option(None, help="blob container", rich_help_panel="azure"),
    account_url: str | None = typer.Option(None, help="https://ACCOUNT.blob.core.windows.net",
                                           rich_help_panel="azure"),
    resource_group: str | None = typer.Option(None, help="create an image in this group", rich_help_panel="azure"),
    location: str | None = typer.Option(None, help="Azure region of the image", rich_help_panel="azure"),
    gallery: str | None = typer.Option(None, help="Compute Gallery name", rich_help_panel="azure"),
    gallery_image: str | None = typer.Option(None, help="gallery image definition", rich_help_panel="azure"),
    project: str | None = typer.Option(None, help="GCP project (default: the SDK's chain)", rich_help_panel="gcp"),
    family: str | None = typer.Option(None, help="GCE image family", rich_help_panel="gcp"),
    cloud: str | None = typer.Option(None, help="clouds.yaml entry (default OS_CLOUD)", rich_help_panel="openstack"),
    visibility: str | None = typer.Option(None, help="Glance visibility", rich_help_panel="openstack"),
    disk_format: str | None = typer.Option(None, help="qcow2 or raw", rich_help_panel="openstack"),
    library: str | None = typer.Option(None, help="content library (else import to inventory)",
                                       rich_help_panel="vsphere"),
    datastore: str | None = typer.Option(None, help="datastore", rich_help_panel="vsphere"),
    folder: str | None = typer.Option(None, help="VM folder for inventory import", rich_help_panel="vsphere"),
    cache_from: str | None = typer.Option(None, "--cache-from", help="take IMAGE's outputs from this registry "
                                          "store into out/IMAGE first (a publish job on another machine than "
                                          "the build); every phase must be there", rich_help_panel="source"),
    fmt: list[str] = typer.Option(None, "--format", "-f", autocompletion=complete.formats,
                                  help="with --cache-from: the formats to take (default from image.yaml)",
                                  rich_help_panel="source"),
    cache: Path | None = typer.Option(None, "--cache-dir", help="with --cache-from: the local cache",
                                      rich_help_panel="source"),
) -> None:
    """Publish IMAGE's build outputs with one provider; receipt in out/IMAGE/publish-PROVIDER.json."""
    from assembler import providers

    given: dict[str, Any] = {
        "registry": registry, "insecure": insecure, "containerdisk": containerdisk, "artifacts": artifacts,
        "bucket": bucket, "region": region, "method": method, "role_name": role_name, "container": container,
        "account_url": account_url, "resource_group": resource_group, "location": location, "gallery": gallery,
        "gallery_image": gallery_image, "project": project, "family": family, "cloud": cloud,
        "visibility": visibility, "disk_format": disk_format, "library": library, "datastore": datastore,
        "folder": folder,
    }
    options = {k: v for k, v in given.items() if v is not None} | _extra(option)
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
