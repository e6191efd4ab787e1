"""vSphere: the OVA into a content library (or straight into the inventory) with govc.

The plan is a list of govc commands (golden-tested); publish runs them through assembler.run. govc reads
its connection from GOVC_URL / GOVC_USERNAME / GOVC_PASSWORD / GOVC_INSECURE (never from options). The item
is named IMAGE-<12 hex of the OVA's sha256>; `govc library.info` finding it makes a re-run a no-op.
The same OVA imports with pyvmomi's OvfManager or the vSphere UI (Deploy OVF Template).
Not run against a vCenter here (docs/publish.md).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from assembler.providers.base import Artifact, BaseProvider, Options, PublishContext, PublishedItem, Receipt
from assembler.run import require_tool, run


class VsphereOptions(Options):
    library: str | None = Field(default=None, description="content library (else import to the inventory)")
    datastore: str | None = Field(default=None, description="datastore")
    folder: str | None = Field(default=None, description="VM folder for inventory import")
    pool: str | None = Field(default=None, description="resource pool for inventory import")


class VsphereProvider(BaseProvider):
    name = "vsphere"
    formats = ("ova",)
    options_model: ClassVar[type[Options]] = VsphereOptions

    @property
    def opts(self) -> VsphereOptions:
        assert isinstance(self.options, VsphereOptions)
        return self.options

    def item_name(self, ctx: PublishContext, art: Artifact) -> str:
        return f"{ctx.outputs.image}-{art.short}"

    def probe(self, ctx: PublishContext, art: Artifact) -> list[str]:
        """The command that exits 0 when the item is already there."""
        name = self.item_name(ctx, art)
        if self.opts.library:
            return ["govc", "library.info", f"/{self.opts.library}/{name}"]
        return ["govc", "vm.info", "-r=false", name]

    def commands(self, ctx: PublishContext, art: Artifact) -> list[list[str]]:
        opts, name = self.opts, self.item_name(ctx, art)
        ds = [f"-ds={opts.datastore}"] if opts.datastore else []
        if opts.library:
            return [["govc", "library.create", *ds, opts.library],
                    ["govc", "library.import", "-n", name, opts.library, str(art.path)]]
        extra = [f"-folder={opts.folder}"] if opts.folder else []
        extra += [f"-pool={opts.pool}"] if opts.pool else []
        return [["govc", "import.ova", f"-name={name}", *ds, *extra, str(art.path)],
                ["govc", "vm.markastemplate", name]]

    def plan(self, ctx: PublishContext) -> list[str]:
        art = ctx.outputs.artifact("ova")
        return [" ".join(cmd) for cmd in [self.probe(ctx, art), *self.commands(ctx, art)]]

    def publish(self, ctx: PublishContext) -> Receipt:
        art = ctx.outputs.artifact("ova")
        require_tool("govc", "govc (github.com/vmware/govmomi) uploads OVAs to vSphere")
        name = self.item_name(ctx, art)
        where = f"library {self.opts.library}" if self.opts.library else "inventory"
        if run(self.probe(ctx, art), check=False).returncode == 0:
            return self.receipt(ctx, [art], [PublishedItem(kind=where.split()[0], id=name, digest=art.sha256,
                                                           reused=True)])
        commands = self.commands(ctx, art)
        if self.opts.library and run(["govc", "library.info", f"/{self.opts.library}"], check=False).returncode == 0:
            commands = commands[1:]  # the library exists
        for cmd in commands:
            run(cmd, resolution="check GOVC_URL / GOVC_USERNAME / GOVC_PASSWORD and the datastore; re-run to retry")
        return self.receipt(ctx, [art], [PublishedItem(kind=where.split()[0], id=name, digest=art.sha256)])
