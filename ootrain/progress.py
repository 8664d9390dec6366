"""Progress bars: one place that decides how (and whether) progress is shown.

Three modes, decided by :func:`progress_mode`:

* ``"bars"`` -- stderr is a terminal: rich's live bars on stderr;
* ``"log"`` -- stderr is not a terminal (a pipe, a CI log, ``nohup``): no bars, but plain log
  lines on stderr, one per task every ``OOTRAIN_PROGRESS_INTERVAL`` seconds (default 10) while
  it runs, and one when it completes (for a task that lasted that long), e.g.
  ``engine step 3/10: 37/100 (12.3 it/s, 8 s)``, so a long run is never silent for minutes;
* ``"off"`` -- nothing: ``enabled=False`` (the CLI's ``--no-progress``: an explicit opt-out
  silences the log lines too), or the environment variable ``OOTRAIN_NO_PROGRESS=1`` (tests,
  CI), which always wins.

``enabled=True`` (the CLI's default) and ``enabled=None`` both mean "bars on a terminal, log
lines elsewhere".  Whatever the mode, :func:`make_progress` returns a ``rich.progress.Progress``
(in ``"log"`` mode a subclass), so callers use one API: ``add_task``, ``advance``, ``update``,
``remove_task``, ``track``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["make_progress", "progress_enabled", "progress_mode", "LogProgress", "track",
           "log_interval"]

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


def progress_mode(enabled: bool | None = None, console: Console | None = None) -> str:
    """``"bars"``, ``"log"`` or ``"off"`` (see the module's docstring)."""
    if os.environ.get("OOTRAIN_NO_PROGRESS") == "1" or enabled is False:
        return "off"
    return "bars" if (console or Console(stderr=True)).is_terminal else "log"


def log_interval() -> float:
    """Seconds between two log lines of one task: ``OOTRAIN_PROGRESS_INTERVAL``, default 10."""
    try:
        value = float(os.environ.get("OOTRAIN_PROGRESS_INTERVAL", "10"))
    except ValueError:
        return 10.0
    return value if value > 0 else 10.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


class LogProgress(Progress):
    """A ``Progress`` without a live display that writes plain log lines instead.

    Each task gets a line ``<description>: <completed>/<total> (<rate> it/s, <elapsed>)`` every
    ``interval`` seconds while it runs (checked on every update and by a background thread, so
    a task stuck in one long step is reported too), and a last line when it completes or is
    removed, if it ran for at least ``interval``.  Short tasks print nothing.
    """

    def __init__(self, *columns: Any, interval: float | None = None,
                 write: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*columns, **kwargs)
        self.interval = log_interval() if interval is None else float(interval)
        self._write = write
        self._last: dict[TaskID, float] = {}
        self._logged: set[TaskID] = set()
        self._done: set[TaskID] = set()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- output -------------------------------------------------------------------------
    def _emit(self, line: str) -> None:
        if self._write is not None:
            self._write(line)
        else:
            stream = sys.stderr
            print(line, file=stream, flush=True)

    @staticmethod
    def format_task(task: Task) -> str:
        """``<description>: 37/100 (12.3 it/s, 8 s)``."""
        desc = Text.from_markup(str(task.description)).plain.strip() or "progress"
        elapsed = task.elapsed or 0.0
        speed = task.speed
        if speed is None and elapsed > 0:
            speed = task.completed / elapsed
        done = f"{task.completed:g}" + (f"/{task.total:g}" if task.total is not None else "")
        rate = "? it/s" if speed is None else f"{speed:.3g} it/s"
        return f"{desc}: {done} ({rate}, {_duration(elapsed)})"

    def _check(self, task_id: TaskID, final: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task_id in self._done:
                return
            finished = final or task.finished
            start = self._last.get(task_id, task.start_time if task.start_time is not None
                                   else now)
            if finished:
                self._done.add(task_id)
                if task_id not in self._logged and (task.elapsed or 0.0) < self.interval:
                    return
            elif now - start < self.interval:
                return
            self._last[task_id] = now
            self._logged.add(task_id)
            line = self.format_task(task)
        self._emit(line)

    def _watch(self) -> None:
        tick = min(1.0, self.interval / 2)
        while not self._stop.wait(tick):
            with self._lock:
                ids = list(self._tasks)
            for task_id in ids:
                self._check(task_id)

    # -- Progress API -------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if self._watcher is None:
            self._stop.clear()
            self._watcher = threading.Thread(target=self._watch, name="ootrain-progress-log",
                                             daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._stop.set()
            self._watcher.join(timeout=5)
            self._watcher = None
        with self._lock:
            ids = list(self._tasks)
        for task_id in ids:
            self._check(task_id, final=True)
        super().stop()

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0,
                 completed: int = 0, visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed,
                                   visible=visible, **fields)
        self._last[task_id] = time.monotonic()
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._check(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._check(task_id)

    def remove_task(self, task_id: TaskID) -> None:
        self._check(task_id, final=True)
        super().remove_task(task_id)
        with self._lock:
            self._last.pop(task_id, None)
            self._logged.discard(task_id)
            self._done.discard(task_id)


def make_progress(enabled: bool | None = None, transient: bool = False) -> Progress:
    """A ``rich.progress.Progress`` with description, bar, M/N, rate, elapsed and remaining.

    Use as a context manager.  On a terminal it shows bars; elsewhere it is a
    :class:`LogProgress` writing periodic plain lines; with ``enabled=False`` or
    ``OOTRAIN_NO_PROGRESS=1`` it is silent (see :func:`progress_mode`), and on
    ``torch.distributed`` ranks other than 0 (bars and console logs alike).
    """
    import torch.distributed as dist

    console = Console(stderr=True)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        enabled, console = False, Console(file=open(os.devnull, "w"))   # one report: rank 0
    mode = progress_mode(enabled, console)
    if mode == "log":
        return LogProgress(TextColumn("[progress.description]{task.description}"),
                           console=console, transient=transient)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=mode == "off",
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
