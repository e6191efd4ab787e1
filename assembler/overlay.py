"""OCI layer semantics over paths, shared by the flattener and the layer index (one set of rules).

Layers are applied bottom-up: a whiteout removes a path and everything below it, an opaque marker empties a
directory (which stays, as a directory), a non-directory replaces whatever was at its path (subtree
included), and a path below a lower non-directory turns that into a directory. Parents are often implicit
(images built by other tools omit their entries): every rule applies to them as to explicit ones, and a
layer's implicit directories are the fresh ones the engine makes when it extracts it (`imply`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


def ancestors(path: str) -> Iterator[str]:
    """a/b/c -> a/b, a (nearest first). Paths are normalised tar names: relative, no trailing slash."""
    parent = path.rpartition("/")[0]
    while parent:
        yield parent
        parent = parent.rpartition("/")[0]


@dataclass
class Overlay(Generic[T]):
    """The merged view: path -> node (whatever the caller keeps: a tar member, an index entry)."""

    is_dir: Callable[[T], bool]
    nodes: dict[str, T] = field(default_factory=dict)
    _children: dict[str, set[str]] = field(default_factory=dict)

    def add(self, path: str, node: T) -> None:
        self._link(path)
        if not self.is_dir(node):
            self.remove_children(path)  # a file or link replaces a directory, explicit or implicit
        for parent in ancestors(path):
            above = self.nodes.get(parent)
            if above is None:
                continue  # implicit: look further up
            if self.is_dir(above):
                break  # every node's ancestors in the tree are directories already: the rest are too
            del self.nodes[parent]  # it is a directory now (implicit until a layer names it)
        self.nodes[path] = node

    def imply(self, directory: str, named: set[str], make_dir: Callable[[str], T]) -> None:
        """A layer that holds something under `directory` (an entry, a whiteout, an opaque marker) without
        naming it or its parents: the engine extracting it makes each of them a fresh root-owned 0755
        directory over whatever the lower layers had there (their children stay). `named` holds the paths
        this layer names or already implied; an entry of the layer given later still replaces the implied one."""
        for path in reversed([d for d in (directory, *ancestors(directory)) if d]):
            if path not in named:
                named.add(path)
                self.add(path, make_dir(path))

    def whiteout(self, path: str) -> None:
        self.remove_children(path)
        self.nodes.pop(path, None)
        self._children.get(posixpath.dirname(path), set()).discard(path)

    def opaque(self, directory: str, make_dir: Callable[[], T]) -> None:
        """Empty `directory`; it stays as a directory even when no layer gave it an entry."""
        self.remove_children(directory)
        current = self.nodes.get(directory)
        if current is None or not self.is_dir(current):
            self.add(directory, make_dir())

    def remove_children(self, path: str) -> None:
        for child in self._children.pop(path, set()):
            self.remove_children(child)
            self.nodes.pop(child, None)

    def _link(self, path: str) -> None:
        """Record path and each implicit parent under its own parent, so removals find them."""
        child = path
        for parent in [*ancestors(path), ""]:
            siblings = self._children.setdefault(parent, set())
            if child in siblings:
                break
            siblings.add(child)
            child = parent
