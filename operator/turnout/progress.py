"""Progress of a long local step: building or downloading a model, starting an engine.

On a terminal, one live line (rich): a bar with the amount done and an ETA when
the size is known, otherwise a spinner with the elapsed time. Anywhere else
(a log, a pipe, CI), plain lines: the step, each new phase, each quarter of a
known size, and how it ended. Either way the step ends with ``done in 1.2s`` or
``failed after 1.2s``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Protocol, TextIO

QUARTERS = (25, 50, 75)


class Report(Protocol):
    """What a long operation calls to say how far it is (every argument optional)."""

    def __call__(self, status: str | None = None, *, completed: float | None = None,
                 total: float | None = None) -> None: ...


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB' (decimal units, as download tools show them)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


class Step:
    """A context manager for one long step; call it (or :meth:`update`) to report progress.

    ``unit`` is ``"B"`` when the amounts are bytes (shown as sizes), else amounts are counts
    (``120/250``). Safe to call from other threads (download workers).
    """

    def __init__(self, out: TextIO, title: str, *, unit: str = "") -> None:
        self.out = out
        self.title = title
        self.unit = unit
        self.started = 0.0
        self.note = ""  # appended to the closing line, e.g. "already in the cache"
        self._lock = threading.Lock()
        self._status: str | None = None
        self._total: float | None = None
        self._completed = 0.0
        self._quarter = 0
        self._live: Any = None  # rich.progress.Progress on a terminal
        self._task: Any = None

    @property
    def total(self) -> float | None:
        """The size reported so far, None while unknown."""
        return self._total

    @property
    def terminal(self) -> bool:
        """A terminal that can redraw a line (not a pipe, a file, or TERM=dumb)."""
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty()) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")

    def __enter__(self) -> Step:
        self.started = time.monotonic()
        print(f"• {self.title} …", file=self.out, flush=True)
        if self.terminal:
            self._live = _live_progress(self.out, self.unit)
            self._task = self._live.add_task("", total=None, status="")
            self._live.start()
        return self

    def __call__(self, status: str | None = None, *, completed: float | None = None,
                 total: float | None = None) -> None:
        self.update(status, completed=completed, total=total)

    def update(self, status: str | None = None, *, completed: float | None = None,
               total: float | None = None) -> None:
        with self._lock:
            changed = status is not None and status != self._status
            if status is not None:
                self._status = status
            if total is not None:
                self._total = total
            if completed is not None:
                self._completed = completed
            if self._live is not None:
                self._live.update(self._task, status=self._status or "", total=self._total,
                                  completed=self._completed)
                return
            if changed:
                print(f"  {status}", file=self.out, flush=True)
            self._print_quarters()

    def tick(self, status: str) -> None:
        """A phase message without an amount (the engine's start)."""
        self.update(status)

    def _print_quarters(self) -> None:
        if not self._total:
            return
        pct = 100 * self._completed / self._total
        while self._quarter < len(QUARTERS) and pct >= QUARTERS[self._quarter]:
            self._quarter += 1
            print(f"  {QUARTERS[self._quarter - 1]}% ({self._amount()})", file=self.out, flush=True)

    def _amount(self) -> str:
        if self.unit == "B":
            return f"{human_bytes(self._completed)} of {human_bytes(self._total or 0)}"
        return f"{self._completed:.0f}/{self._total:.0f}"

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        took = time.monotonic() - self.started
        line = f"done in {took:.1f}s" if exc is None else f"failed after {took:.1f}s"
        note = f" ({self.note})" if self.note and exc is None else ""
        print(f"  {line}{note}", file=self.out, flush=True)


def _live_progress(out: TextIO, unit: str) -> Any:
    """A transient rich progress line: spinner, bar/amount/ETA once a total is known, elapsed time, status."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    class Sized(ProgressColumn):
        """Renders ``inner`` only once the task's total is known."""

        def __init__(self, inner: ProgressColumn) -> None:
            super().__init__()
            self.inner = inner

        def render(self, task: Any) -> Any:
            return self.inner.render(task) if task.total else Text("")

    columns: list[Any] = [
        SpinnerColumn(),
        Sized(BarColumn(bar_width=30)),
        Sized(DownloadColumn() if unit == "B" else MofNCompleteColumn()),
    ]
    if unit == "B":
        columns.append(Sized(TransferSpeedColumn()))
    columns += [Sized(TextColumn("ETA")), Sized(TimeRemainingColumn()), TimeElapsedColumn(),
                TextColumn("{task.fields[status]}")]
    return Progress(*columns, console=Console(file=out), transient=True, refresh_per_second=8,
                    redirect_stdout=False, redirect_stderr=False)
