"""Image on image: a Containerfile that starts `FROM assembler/NAME` builds on another image of ours.

The parent is found beside the image's directory (NAME next to it: a restored BOM, a user's own tree), else
under Containerfiles/. It is built first by its own rootfs phase (or reused from the store), its engine image
is what the FROM resolves to, its base recipe is the child's, and its effective lock is carried into the
child's lock as layer "parent", so the child's lock and BOM describe the whole image.
"""

from __future__ import annotations

from assembler.config import ImageSpec, containerfiles_dir, resolve_image
from assembler.errors import ConfigError
from assembler.packages.lockfile import Lock, LockedPackage
from assembler.rootfs.context import parent_name

MAX_DEPTH = 8  # a chain longer than this is a mistake, not a design


def parent_spec(spec: ImageSpec) -> ImageSpec | None:
    """The image the Containerfile builds on, or None; ConfigError when it names no image of ours."""
    name = parent_name(spec.containerfile)
    if name is None:
        return None
    if name == spec.name:
        raise ConfigError(f"{spec.name} starts FROM assembler/{name}: itself",
                          resolution="name another image of ours, or start from a base (see Containerfiles/debian-12)")
    for candidate in (spec.context.parent / name, containerfiles_dir() / name):
        if (candidate / "Containerfile").is_file():
            return resolve_image(str(candidate)).for_arch(spec.arch)  # built for the same architecture
    raise ConfigError(f"{spec.name} starts FROM assembler/{name}, but there is no image {name}",
                      details=f"looked in {spec.context.parent / name} and {containerfiles_dir() / name}",
                      resolution=f"create {name} beside {spec.context} or under Containerfiles/, or change the FROM")


def ancestors(spec: ImageSpec) -> list[ImageSpec]:
    """The parent, its parent, and so on (nearest first); a cycle or a declared base that differs from the
    ancestors' is one clear error."""
    chain: list[ImageSpec] = []
    current = spec
    while (parent := parent_spec(current)) is not None:
        if parent.context in {s.context for s in (spec, *chain)} or len(chain) >= MAX_DEPTH:
            names = " -> ".join(s.name for s in (spec, *chain, parent))
            raise ConfigError(f"the images build on each other in a loop: {names}",
                              resolution="one of these Containerfiles must start from a base, not FROM assembler/...")
        chain.append(parent)
        current = parent
    declared = [s for s in (spec, *chain) if s.config.base]
    if len({s.config.base for s in declared}) > 1:
        shown = ", ".join(f"{s.name}: {s.config.base}" for s in declared)
        raise ConfigError(f"{spec.name} and the images it builds on declare different bases ({shown})",
                          resolution=f"remove `base:` from the image.yaml of {spec.name}: it builds on "
                                     f"{chain[0].name if chain else spec.name}'s base")
    return chain


def base_of(spec: ImageSpec) -> str | None:
    """The base recipe name: the image's own `base:`, else the nearest ancestor's."""
    for image in (spec, *ancestors(spec)):
        if image.config.base:
            return image.config.base
    return None


def inherited(lock: Lock) -> list[LockedPackage]:
    """The parent's effective lock as the child's layer "parent": what a replay of the child leaves to the
    parent's build (the parent replays its own lock)."""
    return [p.model_copy(update={"layer": "parent"}) for p in lock.packages]
