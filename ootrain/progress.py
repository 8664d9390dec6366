"""Progress bars: one place that decides how (and whether) progress is shown.

Bars go to stderr and are disabled when stderr is not a terminal or when the
environment variable ``OOTRAIN_NO_PROGRESS=1`` is set (CI, logs, pipes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["make_progress", "progress_enabled", "track"]

T = TypeVar("T")


class _RateColumn(ProgressColumn):
    """Items per second, e.g. ``123.4 it/s``."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("? it/s" if speed is None else f"{speed:.1f} it/s", style="progress.data.speed")


def progress_enabled(enabled: bool | None = None, console: Console | None = None) -> bool:
    """Whether to show progress: ``enabled`` if given, else stderr is a TTY and
    ``OOTRAIN_NO_PROGRESS`` is not ``1``. The env var always wins."""
    if os.environ.get("OOTRAIN_NO_PROGRESS") == "1":
        return False
    if enabled is not None:
        return enabled
    return (console or Console(stderr=True)).is_terminal


def make_progress(enabled: bool | None = None, transient: bool = False) -> Progress:
    """A ``rich.progress.Progress`` with description, bar, M/N, rate, elapsed and remaining.

    Use as a context manager; it is a no-op when disabled (see :func:`progress_enabled`).
    """
    console = Console(stderr=True)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not progress_enabled(enabled, console),
    )


def track(
    iterable: Iterable[T],
    total: int | None = None,
    description: str = "",
    enabled: bool | None = None,
) -> Iterator[T]:
    """Iterate over ``iterable`` while showing a progress bar (``total`` defaults to ``len``)."""
    with make_progress(enabled) as progress:
        yield from progress.track(iterable, total=total, description=description)
