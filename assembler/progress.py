"""What a person watches: one live status line for the long step running now, plain lines elsewhere.

A phase opens an activity ("rootfs"); code deep inside it reports the stage reached ("Step 3/9 : RUN …",
"kernel", "SSH up; checks") with `stage()`, without being handed anything. On a terminal one line shows
the activities (nested ones joined: "boot > bios"), the stage and the elapsed time, redrawn while it runs;
on anything else (CI logs, a pipe) every new stage is one plain line with the time it was reached.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from rich.markup import escape
from rich.text import Text

from assembler.log import console


@dataclass
class _Activity:
    title: str
    detail: str = ""
    started: float = field(default_factory=time.monotonic)


_lock = threading.Lock()
_stack: list[_Activity] = []


def elapsed(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{seconds:.0f}s"


class _Line:
    """The live line's renderable: rich redraws it several times a second, so the clock moves."""

    def __rich__(self) -> Text:
        with _lock:
            if not _stack:
                return Text("")
            titles = " > ".join(a.title for a in _stack)
            detail = next((a.detail for a in reversed(_stack) if a.detail), "")
            since = time.monotonic() - _stack[0].started
        line = Text(titles, style="bold")
        if detail:
            line.append(f"  {detail[:100]}")
        line.append(f"  {elapsed(since)}", style="cyan")
        return line


@contextmanager
def activity(title: str) -> Iterator[None]:
    """A long step; nested activities share the outer one's live line."""
    entry = _Activity(title)
    with _lock:
        outermost = not _stack
        _stack.append(entry)
    live = console.status(_Line(), spinner="dots") if outermost and console.is_terminal else nullcontext()
    try:
        with live:
            yield
    finally:
        with _lock:
            _stack.remove(entry)


def stage(detail: str, *, keep: bool = False) -> None:
    """The stage the innermost activity reached. `keep`: also a permanent line on a terminal (history)."""
    with _lock:
        current = _stack[-1] if _stack else None
        if current is None or current.detail == detail:
            return
        current.detail = detail
        titles = " > ".join(a.title for a in _stack)
        since = time.monotonic() - _stack[0].started
    if keep or not console.is_terminal:
        console.print(f"    [dim]{escape(titles)}: {escape(detail[:150])} ({elapsed(since)})[/]", highlight=False,
                      soft_wrap=True)
