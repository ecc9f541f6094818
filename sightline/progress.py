"""One progress interface for long work.

Library functions take `progress: ProgressFn | None` and report through a `Steps` they open per task; they never
draw anything themselves. The command line passes `rich_progress()`'s callback, which draws one rich bar per
task; a script passes its own callback (a log line, a web hook) or nothing.

Example:
    >>> with rich_progress() as progress:              # the CLI
    ...     predictions = engine.predict_files(paths, progress=progress)
    >>> def log(event: ProgressEvent) -> None:         # a library caller
    ...     print(event.task, event.done, event.total)
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["ProgressEvent", "ProgressFn", "Steps", "rich_progress"]


@dataclass(frozen=True)
class ProgressEvent:
    """`done` of `total` units of `task` are finished (`total` None when unknown); `finished` on the last event."""

    task: str
    done: int
    total: int | None
    finished: bool = False


ProgressFn = Callable[[ProgressEvent], None]


class Steps:
    """Reports one task's progress to `progress` (nothing happens without one). Use as a context manager so the
    task is marked finished even when the work stops early. `advance` may be called from several threads."""

    def __init__(self, progress: ProgressFn | None, task: str, total: int | None) -> None:
        self.progress = progress
        self.task = task
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        self._emit(False)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            self._emit(False)

    def close(self) -> None:
        self._emit(True)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(self, finished: bool) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(self.task, self.done, self.total, finished))


@contextmanager
def rich_progress(*, console=None, transient: bool = True, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """A ProgressFn that draws a rich bar per task (on stderr unless `console` says otherwise); None when not
    `enabled`, so callers can pass `--quiet` / `--json` straight through."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    if transient and not (console.is_terminal or console.is_jupyter):
        # not a terminal (a pipe, a log file, a test's capture): rich draws nothing there but a newline when the bar
        # stops, so an error after it read "\nerror: ..." (two lines); a transient bar would show nothing anyway
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=transient) as bar:
        tasks: dict[str, int] = {}

        def update(event: ProgressEvent) -> None:
            if event.task not in tasks:
                tasks[event.task] = bar.add_task(event.task, total=event.total)
            task = tasks[event.task]
            bar.update(task, completed=event.done, total=event.total)
            if event.finished:
                bar.remove_task(task)
                del tasks[event.task]

        yield update
