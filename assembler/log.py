"""Console output: one rich console on stderr so stdout stays clean for --json."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True, highlight=False)
log = logging.getLogger("assembler")


def setup_logging(debug: bool = False) -> None:
    handler = RichHandler(console=console, show_time=debug, show_path=False, markup=False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], format="%(message)s")
    log.setLevel(logging.DEBUG if debug else logging.INFO)
