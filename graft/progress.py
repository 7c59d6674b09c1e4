"""One progress bar for every long step: feature extraction, training epochs, batch inference.

    with Progress(enabled=True) as progress:
        task = progress.task("features", total=len(samples), unit="img")
        task.advance(32)
        task.update(status="loss 0.31")

A disabled ``Progress`` hands out tasks that do nothing, so callers never branch.
On a terminal the bar is rich's, on stderr: description, bar, done/total, rate,
elapsed, time left and a free status text. When stderr is not a terminal (a CI
log, ``> build.log 2>&1``) the same facts come as plain lines, one per task
every ``PLAIN_EVERY_S`` seconds and one when it ends, instead of bars cut to an
unknown width.
"""

from __future__ import annotations

import sys
import time

PLAIN_EVERY_S = 10.0


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class Task:
    """One line of the bar (or nothing, when the bar is disabled)."""

    def __init__(self, bar=None, task_id=None):
        self._bar, self._id = bar, task_id

    def advance(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._id, count)

    def update(self, **fields) -> None:
        """Change the status text (``status=``) or the total (``total=``)."""
        if self._bar is not None:
            self._bar.update(self._id, **fields)

    def finish(self) -> None:
        """Mark the task complete at what it reached (e.g. training stopped early)."""
        if self._bar is not None:
            completed = self._bar.tasks[self._index()].completed
            self._bar.update(self._id, total=completed)

    def _index(self) -> int:
        return next(i for i, task in enumerate(self._bar.tasks) if task.id == self._id)


class Progress:
    """A rich progress display on stderr, or a silent stand-in when ``enabled`` is False."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None

    def __enter__(self) -> "Progress":
        self._plain: list[_PlainTask] = []
        if self.enabled and not stderr_is_terminal():
            return self
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"), console=Console(stderr=True), transient=False)
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        for task in self._plain:
            task.finish()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def task(self, description: str, total: int | None, unit: str = "") -> Task:
        """Add a line; ``unit`` (e.g. 'img') shows a rate such as '212.3 img/s'."""
        if self.enabled and self._bar is None:
            task = _PlainTask(description, total, unit)
            self._plain.append(task)
            return task
        if self._bar is None:
            return Task()
        task_id = self._bar.add_task(description, total=total, status="", rate="")
        if unit:
            return _RateTask(self._bar, task_id, unit)
        return Task(self._bar, task_id)


class _RateTask(Task):
    """A task that also shows its average rate since it started (steady, unlike a burst)."""

    def __init__(self, bar, task_id, unit: str):
        super().__init__(bar, task_id)
        self.unit = unit

    def advance(self, count: int = 1) -> None:
        super().advance(count)
        task = self._bar.tasks[self._index()]
        if task.completed and task.elapsed:
            self._bar.update(self._id, rate=f"{task.completed / task.elapsed:,.1f} {self.unit}/s")


class _PlainTask(Task):
    """A task written as plain lines on stderr: every ``PLAIN_EVERY_S`` seconds, and once at the end."""

    def __init__(self, description: str, total: int | None, unit: str = ""):
        super().__init__()
        self.description, self.total, self.unit = description.strip(), total, unit
        self.completed, self.status = 0, ""
        self.started = self._last = time.monotonic()
        self._ended = False

    def advance(self, count: int = 1) -> None:
        self.completed += count
        now = time.monotonic()
        if self.total is not None and self.completed >= self.total:
            self.finish()
        elif now - self._last >= PLAIN_EVERY_S:
            self._last = now
            self._write()

    def update(self, **fields) -> None:
        self.status = str(fields.get("status", self.status))
        if "total" in fields:
            self.total = fields["total"]

    def finish(self) -> None:
        if not self._ended:
            self._ended = True
            if self.total or self.completed:  # a step with nothing to do says nothing
                self._write(final=True)

    def _write(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        done = f"{self.completed:,}" + (f"/{self.total:,}" if self.total else "")
        parts = [f"{self.description}: {done}" + (" done" if final else "")]
        if self.unit and elapsed > 0 and self.completed:
            parts.append(f"{self.completed / elapsed:,.1f} {self.unit}/s")
        parts.append(f"{elapsed:.0f}s elapsed")
        if not final and self.total and self.completed:
            parts.append(f"about {(self.total - self.completed) * elapsed / self.completed:.0f}s left")
        if self.status:
            parts.append(self.status)
        print(", ".join(parts), file=sys.stderr, flush=True)
