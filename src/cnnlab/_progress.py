"""Progress on the console for the waits that are not epochs: decoding an image archive into the
cache, writing a report.

A :class:`Reporter` is made where ``quiet`` and the output stream are known (the runner, the CLI)
and is passed on. It has three modes (:class:`Mode`): on a terminal it draws with rich (a bar with
the percentage and the time left when the total is known, a spinner with the elapsed time when it
is not) and prints one line when the work is done; elsewhere (a pipe, a log file) it prints a
handful of plain ASCII lines: the start, each quarter reached (25 %, 50 %, 75 %) with the time
left, and the end; quiet, it prints nothing.

The data loaders keep the registry's signature ``(cfg) -> RawData``, so the decode loop cannot be
handed a reporter as an argument: the runner installs its reporter for the length of the load
with :func:`reporting`, and the loop asks :func:`current_reporter`. That is a ContextVar, so each
thread sees its own; outside a ``reporting`` block it is quiet (``cnnlab evaluate --json`` prints
its JSON only).

rich's live display is imported only when a terminal draws: the run's data loading imports this
module, and a run in a pipe or a batch job does not need it.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from enum import Enum
from typing import IO, Any, Callable, Iterator


class Mode(Enum):
    """How a :class:`Reporter` shows progress."""

    TERMINAL = "terminal"  # rich: a live bar or spinner, then one line
    PLAIN = "plain"  # a few lines: start, quarters, end
    QUIET = "quiet"  # nothing


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal. Any file-like object may stand for stdout (a test's
    StringIO, a logging adapter): one without ``isatty`` is not a terminal."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def fmt_duration(seconds: float) -> str:
    """``seconds`` as M:SS under an hour, H:MM:SS from an hour on (rounded to the second)."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Reporter:
    """Where progress goes. ``quiet``: nothing is shown; else a terminal ``stream`` (default
    stdout) gets rich's live display and any other stream plain lines. ``clock``: seconds
    (``time.perf_counter``; tests give a fake one)."""

    def __init__(self, quiet: bool = False, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        if quiet:
            self.mode = Mode.QUIET
        else:
            self.mode = Mode.TERMINAL if is_terminal(self.stream) else Mode.PLAIN

    def task(self, description: str, total: float | None = None, note: str = "") -> "Task":
        """A context manager for one piece of work: ``description`` names it ("decoding archive
        x.tar.gz"), ``total`` is its size in the units :meth:`Task.update` counts (None: unknown,
        shown as a spinner on a terminal and as a start line elsewhere), ``note`` is added to the
        plain start line only."""
        return Task(self, description, total, note)

    def say(self, line: str) -> None:
        """Print one line unless quiet."""
        if self.mode is not Mode.QUIET:
            print(line, file=self.stream, flush=True)


# Quarters of the work after which the plain mode prints a line (the end has its own line).
PLAIN_MARKS = 4


class Task:
    """One piece of work being shown; made by :meth:`Reporter.task`, used as a context manager.
    :meth:`update` sets how much is done; :meth:`finish` sets the line printed when the block ends
    normally (default: ``"<description>: done in N.N s"``; None prints nothing). An exception
    leaving the block ends the display and prints nothing: the error says what happened."""

    def __init__(self, reporter: Reporter, description: str, total: float | None, note: str = ""):
        self.reporter, self.description, self.total, self.note = reporter, description, total, note
        self.completed = 0.0
        self._start: float | None = None
        self._marks_shown = 0  # plain mode: quarters already printed
        self._done_line: str | None = ""  # "": the default line
        self._live: Any = None  # rich.progress.Progress while a terminal shows it
        self._task_id: Any = None

    @property
    def seconds(self) -> float:
        """Seconds since the block began."""
        return 0.0 if self._start is None else self.reporter.clock() - self._start

    def __enter__(self) -> "Task":
        self._start = self.reporter.clock()
        mode = self.reporter.mode
        if mode is Mode.PLAIN:
            self.reporter.say(f"{self.description}{self.note} ...")
        elif mode is Mode.TERMINAL:
            self._live = _rich_progress(self.reporter, known_total=self.total is not None)
            self._task_id = self._live.add_task(self.description, total=self.total)
            self._live.start()
            self._live.refresh()  # drawn now: there is no refresh thread (see _rich_progress)
        return self

    def update(self, completed: float, total: float | None = None) -> None:
        """``completed`` units of ``total`` are done (a running count, not an increment). ``total``:
        the size, for work that learns it only once started (a report counts its sections); a
        spinner then shows the percentage too, and plain mode prints its quarters."""
        self.completed = float(completed)
        if total is not None:
            self.total = float(total)
        if self._live is not None:
            # No refresh thread (see _rich_progress): each update redraws.
            self._live.update(self._task_id, completed=self.completed, total=self.total)
            self._live.refresh()
        elif self.reporter.mode is Mode.PLAIN and self.total:
            frac = min(1.0, self.completed / self.total)
            mark = math.floor(frac * PLAIN_MARKS)
            if self._marks_shown < mark < PLAIN_MARKS:  # the highest quarter reached; the end has its line
                self._marks_shown = mark
                elapsed = self.seconds
                left = elapsed * (1 - frac) / frac
                self.reporter.say(f"{self.description}: {100 * mark // PLAIN_MARKS}% after {elapsed:.1f} s, "
                                  f"about {fmt_duration(left)} left")

    def finish(self, line: str | None) -> None:
        """The line printed when the block ends (None: none)."""
        self._done_line = line

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._live is not None:
            self._live.stop()  # transient: the bar is erased, the line below replaces it
            self._live = None
        if exc_type is None and self._done_line is not None:
            self.reporter.say(self._done_line or f"{self.description}: done in {self.seconds:.1f} s")


def _rich_progress(reporter: Reporter, known_total: bool) -> Any:
    """rich's live display on the reporter's stream: a bar, the percentage and the time left for a
    known total, a spinner and the elapsed time for an unknown one."""
    from rich.console import Console  # only a terminal draws with rich (see the module docstring)
    from rich.progress import (BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    text = TextColumn("{task.description}", markup=False)  # file names may hold [brackets]
    columns = (text, BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn()) if known_total \
        else (SpinnerColumn(), text, TaskProgressColumn(), TimeElapsedColumn())  # a percentage once a total is known
    # redirect_*: False, so output written meanwhile (a warning, a worker process) is not routed
    # through rich's console lock.
    # No refresh thread at all: a report may decode its data set with a forked process pool, and a
    # thread holding the console's lock at a fork is a deadlock waiting to happen; each update redraws.
    return Progress(*columns, console=Console(file=reporter.stream), transient=True, auto_refresh=False,
                    redirect_stdout=False, redirect_stderr=False, get_time=reporter.clock)


_QUIET = Reporter(quiet=True)
_CURRENT: ContextVar[Reporter] = ContextVar("cnnlab_progress_reporter", default=_QUIET)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Make ``reporter`` the one :func:`current_reporter` returns inside the block (in this thread)."""
    token = _CURRENT.set(reporter)
    try:
        yield reporter
    finally:
        _CURRENT.reset(token)


def current_reporter() -> Reporter:
    """The reporter a :func:`reporting` block installed; a quiet one outside any."""
    return _CURRENT.get()
