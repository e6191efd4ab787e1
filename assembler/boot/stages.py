"""Where a boot is, read from the serial console as it is written: firmware, kernel, userspace.

The split (firmware → kernel → userspace → SSH → checks) says where boot time goes, and the live status
line shows the stage reached. Times are seconds since QEMU started, sampled every POLL seconds; the console
is guest output, so only fixed markers are matched and nothing of it is echoed.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

POLL = 0.25
# The first line the kernel prints, then the first sign of the init system (systemd's own messages or its
# banner; "Run /sbin/init" when the kernel hands over without an initramfs). Each is looked for only after
# the one before it: grub's "Welcome to GRUB!" comes before any kernel.
MARKERS = (
    ("kernel", re.compile(rb"Linux version \d")),
    ("userspace", re.compile(rb"systemd\[1\]: |Welcome to \x1b\[1m|Run /sbin/init as init process")),
)
_OVERLAP = 64  # a marker split across two reads is still found


def seen(text: bytes, already: int = 0) -> list[str]:
    """The stages after the first `already` whose markers occur in `text` one after the other."""
    found: list[str] = []
    at = 0
    for name, pattern in MARKERS[already:]:
        match = pattern.search(text, at)
        if match is None:
            break
        found.append(name)
        at = match.end()
    return found


class ConsoleWatch:
    """Polls a growing console log in a thread; `times` maps each stage reached to when it was first seen."""

    def __init__(self, path: Path, started: float, on_stage: Callable[[str], None]) -> None:
        self.path, self.started, self.on_stage = path, started, on_stage
        self.times: dict[str, float] = {}
        self._offset, self._tail = 0, b""
        self._stop = threading.Event()

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        if not chunk:
            return
        self._offset += len(chunk)
        window, self._tail = self._tail + chunk, (self._tail + chunk)[-_OVERLAP:]
        for name in seen(window, len(self.times)):
            self.times[name] = round(time.monotonic() - self.started, 1)
            self.on_stage(name)

    def _loop(self) -> None:
        while not self._stop.wait(POLL) and len(self.times) < len(MARKERS):
            self.poll()

    @contextmanager
    def running(self) -> Iterator[ConsoleWatch]:
        thread = threading.Thread(target=self._loop, name="console-watch", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.poll()  # what was written since the last sample


def split(times: dict[str, float], ssh: float | None) -> dict[str, float]:
    """Seconds spent in each stage: firmware (to the kernel), kernel (to userspace), userspace (to SSH).
    Spans stop at the first stage not seen rather than guess."""
    marks = [("firmware", 0.0)]
    for name, _ in MARKERS:
        if name not in times:
            break  # the next span would cover two stages under one name
        marks.append((name, times[name]))
    else:
        if ssh is not None:
            marks.append(("ssh", ssh))
    return {name: round(end - start, 1) for (name, start), (_, end) in itertools.pairwise(marks)}
