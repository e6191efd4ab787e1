"""Shell completion of the values users type most: image names and output formats (`--install-completion`)."""

from __future__ import annotations


def images(incomplete: str) -> list[str]:
    from assembler.config import list_images

    return [name for name in list_images() if name.startswith(incomplete)]


def formats(incomplete: str) -> list[str]:
    from assembler.formats import load_formats, load_profiles

    plugins = load_formats()
    names = sorted({*plugins, *load_profiles(None, plugins)})
    return [name for name in names if name.startswith(incomplete)]
