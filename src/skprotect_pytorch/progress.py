"""Console progress for long steps (export, AOTInductor compile) and the output path line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape

from .logs import get_logger

console = Console(stderr=True)


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    """Show a spinner while a step runs, then one line with its duration; log both. ``message``
    is plain text: a path's ``[v2]`` was read as markup (dropped, or a ``MarkupError``)."""
    logger = get_logger()
    logger.debug("start: %s", message)
    start = time.perf_counter()
    with console.status(f"{escape(message)}…"):
        yield
    seconds = time.perf_counter() - start
    logger.debug("done: %s (%.2f s)", message, seconds)
    console.print(
        f"[green]✓[/green] {escape(message)} [dim]({seconds:.1f} s)[/dim]", highlight=False
    )
