"""Live progress: what the session is doing now and how far it is.

The lifecycle (`ExperimentSession`) reports stages through a `Progress` object it is given
(pre-flight and model conversion, model loading, idle baseline, warmup i of n, thermal floor
countdown, repeat i of n); the pytest layer adds "experiment k of N". Two renderers:

- `LiveStatus`, on a terminal: one transient status line drawn by rich below pytest's own line
  while a test runs, erased before pytest writes the test's outcome, so the usual output is
  left exactly as pytest wrote it.
- `PlainLines`, where output is not a terminal (CI logs) or capture is off (`-s`): whole lines,
  at most one every `interval_s` (9.5 s) and, while an experiment runs, one as soon as
  `interval_s` has passed (a heartbeat thread asks 4 times a second), so lines come every
  9.5-10 s: a CI log is never flooded and never silent for more than 10 s.

`-q` (or `-p no:llem` workers under xdist) shows nothing. Progress is written to a duplicate of
the terminal's file descriptor taken at start-up, so pytest's output capture never swallows it
and it never enters a test's captured output.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TextIO

import pytest

from pytest_llem.hardware.clock import WALL_CLOCK, PeriodicThread
from pytest_llem.measure.progress import Reports

if TYPE_CHECKING:  # rich loads with the first experiment shown, not at pytest start-up
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

PLAIN_INTERVAL_S = 9.5  # with the heartbeat's 0.25 s, a line at least every 10 s
PREFIX = "[llem]"


# the time source of the renderers the plugin creates (the one wall clock, `hardware.clock`);
# tests replace it to check throttling
CLOCK: Callable[[], float] = WALL_CLOCK.now


@dataclass(frozen=True)
class Status:
    experiment: str | None = None
    index: int | None = None  # experiment k ...
    count: int | None = None  # ... of N
    stage: str | None = None
    step: int | None = None
    total: int | None = None
    countdown_s: float | None = None
    stage_started: float = 0.0


def describe(status: Status, now: float) -> str:
    """One line: `[llem] experiment 2/5 test_a[4] | repeat 1/3 | 12 s`."""
    parts = [PREFIX]
    if status.index is not None:
        parts.append(
            f"experiment {status.index}/{status.count}" if status.count else f"experiment {status.index}"
        )
    if status.experiment:
        parts.append(status.experiment)
    if status.stage:
        stage = status.stage
        if status.step is not None:
            stage += f" {status.step}/{status.total}" if status.total else f" {status.step}"
        elapsed = max(0.0, now - status.stage_started)
        if status.countdown_s is not None:
            stage += f" | {max(0.0, status.countdown_s - elapsed):.0f} s left"
        else:
            stage += f" | {elapsed:.0f} s"
        parts.append("| " + stage)
    return " ".join(parts)


class Tracker:
    """Holds the current status (thread-safe); subclasses decide when and how to show it."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or CLOCK
        self._lock = threading.Lock()
        self.status: Status | None = None  # None between experiments
        self.owned_stream: TextIO | None = None  # a descriptor duplicated for it, closed by close()
        self._text: str | None = None  # shown instead of `status` (the xdist controller's workers)

    def begin_experiment(self, label: str, index: int, count: int | None) -> None:
        with self._lock:
            self.status = Status(label, index, count, stage_started=self.clock())
        # shown with its first stage, so a throttled log does not spend its line on the name alone

    def update(
        self, stage: str, step: int | None = None, total: int | None = None, countdown_s: float | None = None
    ) -> None:
        with self._lock:
            base = self.status or Status()
            self.status = replace(
                base, stage=stage, step=step, total=total, countdown_s=countdown_s, stage_started=self.clock()
            )
        self._changed()

    def end_experiment(self) -> None:
        self.pause()
        with self._lock:
            self.status = None

    def line(self) -> str | None:
        with self._lock:
            if self._text is not None:
                return self._text
            return describe(self.status, self.clock()) if self.status else None

    def show(self, text: str | None) -> None:
        """Show `text` instead of this process's own status (the xdist controller shows its
        workers' stages, `plugin.worker_progress`); None: nothing to show now."""
        with self._lock:
            self._text = text
        if text is None:
            self.pause()
        else:
            self._changed()

    def tick(self) -> None:
        """Called about once a second by the heartbeat thread."""

    def pause(self) -> None:
        """pytest is about to write: get out of its way."""

    def close(self) -> None:
        self.pause()
        if self.owned_stream is not None:
            self.owned_stream.close()
            self.owned_stream = None

    def _changed(self) -> None:
        pass


class PlainLines(Tracker):
    """Whole lines, at most one per `interval_s`; while an experiment runs, `tick()` writes the
    current status once `interval_s` has passed since the last line, changed or not."""

    def __init__(
        self,
        stream: TextIO,
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] | None = None,
        column: Callable[[], int] = lambda: 0,
    ) -> None:
        super().__init__(clock)
        self._stream = stream
        self._interval_s = interval_s
        self._column = column  # where pytest's own current line ends
        self._last_write: float | None = None
        self._column_after_write = -1

    def _changed(self) -> None:
        self._maybe_write()

    def tick(self) -> None:
        self._maybe_write()

    def _maybe_write(self) -> None:
        text = self.line()
        now = self.clock()
        if text is None or (self._last_write is not None and now - self._last_write < self._interval_s):
            return
        column = self._column()
        # pytest may be mid-line ("tests/test_x.py ..."): start on a fresh line, once
        prefix = "\n" if column > 0 and column != self._column_after_write else ""
        self._stream.write(prefix + text + "\n")
        self._stream.flush()
        self._last_write = now
        self._column_after_write = column


class LiveStatus(Tracker):
    """A transient rich status line below pytest's current line, refreshed once a second."""

    def __init__(self, console: Console, column: Callable[[], int] = lambda: 0) -> None:
        super().__init__()
        self._console = console
        self._column = column
        self._live: Live | None = None
        self._live_lock = threading.Lock()

    def _render(self) -> Text:
        from rich.text import Text

        return Text(self.line() or "", style="cyan", no_wrap=True, overflow="ellipsis")

    def _changed(self) -> None:
        with self._live_lock:
            if self._live is None:
                from rich.live import Live

                self._console.file.write("\n")  # below pytest's line, which stays intact
                self._live = Live(
                    console=self._console,
                    get_renderable=self._render,
                    transient=True,
                    refresh_per_second=1,
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
                self._live.start()
            else:
                self._live.refresh()

    def pause(self) -> None:
        with self._live_lock:
            if self._live is None:
                return
            from rich.control import Control

            self._live.stop()  # transient: the status line is erased
            self._live = None
            # back to the end of pytest's line, so its next character lands where it expects
            self._console.control(Control.move_to_column(self._column(), y=-1))
            self._console.file.flush()


class Heartbeat:
    """Calls `tracker.tick()` every `period_s` (the first after one period) on the one
    periodic-thread helper (`hardware.clock.PeriodicThread`), until stopped."""

    def __init__(self, tracker: Tracker, period_s: float = 0.25) -> None:
        self._thread = PeriodicThread(period_s, tracker.tick, "llem-progress", first_at_start=False)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()


def terminal_stream(file: Any) -> TextIO:
    """A duplicate of `file`'s descriptor, taken while pytest's capture is suspended, so later
    writes reach the terminal even while a test's output is being captured. A file without a
    descriptor (pytester's in-process runs) is used as it is."""
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError):
        return file  # type: ignore[no-any-return]
    return os.fdopen(os.dup(fd), "w", encoding=getattr(file, "encoding", None) or "utf-8", buffering=1)


def known_skipped(item: pytest.Item) -> bool:
    """Whether `item` is sure to be skipped before it runs: a `skip` mark, or a `skipif` mark
    with no condition or with a true non-string one. A string condition is left to pytest
    (it is evaluated in the test module's namespace); such a test is discounted when its skip
    is reported."""
    if item.get_closest_marker("skip") is not None:
        return True
    for mark in item.iter_markers("skipif"):
        conditions = mark.args or ((mark.kwargs["condition"],) if "condition" in mark.kwargs else ())
        if not conditions:
            return True
        for condition in conditions:
            if isinstance(condition, str):
                continue
            try:
                if condition:
                    return True
            except Exception:  # pytest itself reports a condition that cannot be judged
                continue
    return False


class ProgressHooks:
    """pytest glue: picks the renderer once the terminal reporter exists, hands it to the
    lifecycle through `attach`, numbers experiments k of N, gets out of pytest's way before it
    reports, and keeps a heartbeat going while an experiment runs.

    N counts the tests that use the `llem` fixture and can measure: after deselection, less
    those sure to be skipped; a test that skips before it records any result is taken out of
    N when its skip is reported, and gives its number k back, so the last experiment reads
    N of N."""

    def __init__(
        self,
        lifecycle: Reports,
        make_tracker: Callable[[pytest.Config], Tracker | None] | None = None,
        numbered_of_n: bool = True,
    ) -> None:
        self._lifecycle = lifecycle
        self._make_tracker = make_tracker or tracker_for
        self._numbered_of_n = numbered_of_n  # an xdist worker runs a share it cannot count
        self.tracker: Tracker | None = None
        self._count: int | None = None
        self._index = 0
        self._discounted: set[str] = set()  # nodeids already taken out of N
        self._current: str | None = None  # the nodeid of the running llem test, if it has a number
        self._measured = False  # the running llem test has recorded a result

    @staticmethod
    def _uses_llem(item: pytest.Item) -> bool:
        return "llem" in getattr(item, "fixturenames", ())

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.tracker = self._make_tracker(session.config)
        if self.tracker is None:
            return
        self._lifecycle.progress = self.tracker

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        llem_items = [item for item in session.items if self._uses_llem(item)]
        self._discounted = {item.nodeid for item in llem_items if known_skipped(item)}
        self._count = len(llem_items) - len(self._discounted) if self._numbered_of_n else None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        if self.tracker is None or not self._uses_llem(item) or item.nodeid in self._discounted:
            return (yield)
        self._index += 1
        self._current, self._measured = item.nodeid, False
        self.tracker.begin_experiment(item.nodeid.split("::", 1)[-1], self._index, self._count)
        # the heartbeat lives only while an experiment runs: a session without llem tests
        # (or between them) has no extra thread
        heartbeat = Heartbeat(self.tracker) if isinstance(self.tracker, PlainLines) else None
        if heartbeat is not None:
            heartbeat.start()
        try:
            return (yield)
        finally:
            if heartbeat is not None:
                heartbeat.stop()
            self.tracker.end_experiment()
            self._current = None

    def pytest_llem_experiment_result(self, item: pytest.Item, result: object) -> None:
        if item.nodeid == self._current:
            self._measured = True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.tracker is not None:
            self.tracker.pause()
        self._discount_if_unmeasured(report)

    def _discount_if_unmeasured(self, report: pytest.TestReport) -> None:
        """A test skipped before it measured, or one that passed without measuring (it only
        recorded benchmark figures with `llem.record_figure`), is no experiment: out of N, its
        number given back."""
        figures_only = report.when == "call" and report.passed
        if (
            not (report.skipped or figures_only)
            or hasattr(report, "wasxfail")  # xfail is reported as skipped, but the test ran
            or report.nodeid != self._current
            or self._measured
            or report.nodeid in self._discounted
        ):
            return
        self._discounted.add(report.nodeid)
        self._index -= 1
        if self._count is not None:
            self._count -= 1

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.tracker is not None:
            self.tracker.close()


def tracker_for(config: pytest.Config) -> Tracker | None:
    """The renderer this pytest run gets: None under -q, on xdist workers, or without a
    terminal reporter; lines when not a terminal or with -s; otherwise the live status."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0 or hasattr(config, "workerinput"):
        return None
    writer = config.get_terminal_writer()

    def column() -> int:
        return writer.width_of_current_line

    # the file pytest's terminal reporter writes to; between tests capture is suspended, so
    # sys.stdout is that file now
    stream = terminal_stream(sys.stdout)
    tracker: Tracker
    if not reporter.isatty or config.getoption("capture") == "no":
        tracker = PlainLines(stream, column=column)
    else:
        from rich.console import Console

        console = Console(
            file=stream, force_terminal=True, no_color=not writer.hasmarkup, width=writer.fullwidth
        )
        tracker = LiveStatus(console, column)
    tracker.owned_stream = stream if stream is not sys.stdout else None
    return tracker
