"""Where measurement code reads the time, waits, and runs periodic polls.

Real runs use the wall clock (`time.perf_counter`) and one daemon thread per periodic poll.
`pytest_llem.testing` installs a `SimulatedClock` instead: time moves only when the simulated
engine (or a test) advances it, and periodic callbacks fire in order, on the advancing thread,
at every tick instant crossed. The same meter, sampler and baseline code then runs exactly and
instantly, whatever else the machine is doing, so tests cannot depend on thread scheduling.

Code asks `current()` for the clock at the moment it needs it; nothing holds one across a
simulation's lifetime.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Ticker(Protocol):
    """A periodic callback: fires once at `start()`, then every interval until `stop()`."""

    def start(self) -> None: ...

    def stop(self) -> None:
        """Stop firing; re-raise the first exception a callback raised, if any."""


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (not a Unix time)."""

    def sleep(self, seconds: float) -> None: ...

    def every(self, interval_s: float, callback: Callable[[], None], name: str) -> Ticker: ...


class PeriodicThread:
    """The one periodic-thread helper: a daemon thread calling `callback()` every `interval_s`
    (first at `start()`, or after one interval with `first_at_start=False`); its first error
    ends it and is re-raised by `stop()`, so a failed poll is never silently lost. The wall
    clock's pollers and the progress heartbeat both run on it."""

    def __init__(
        self, interval_s: float, callback: Callable[[], None], name: str, first_at_start: bool = True
    ) -> None:
        self._first_at_start = first_at_start
        self._interval_s = interval_s
        self._callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        next_tick = time.perf_counter()
        if not self._first_at_start:
            next_tick += self._interval_s
            if self._stop.wait(self._interval_s):
                return
        while not self._stop.is_set():
            try:
                self._callback()
            except BaseException as exc:  # handed to stop(), on the caller's thread
                self._error = exc
                return
            next_tick += self._interval_s
            self._stop.wait(max(0.0, next_tick - time.perf_counter()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error


class WallClock:
    """The real clock: perf_counter time, real sleeps, a thread per periodic poll."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def every(self, interval_s: float, callback: Callable[[], None], name: str) -> Ticker:
        return PeriodicThread(interval_s, callback, name)


class _SimulatedTicker:
    def __init__(self, clock: SimulatedClock, interval_s: float, callback: Callable[[], None]) -> None:
        self._clock = clock
        self.interval_s = interval_s
        self._callback = callback
        self.active = False
        self._error: BaseException | None = None

    def fire(self) -> None:
        try:
            self._callback()
        except Exception as exc:  # like a thread that died: reported by stop()
            self._error = exc
            self.active = False

    def start(self) -> None:
        self.active = True
        self._clock._schedule(self, self._clock.now())

    def stop(self) -> None:
        self.active = False
        self._clock._unschedule(self)
        error, self._error = self._error, None
        if error is not None:
            raise error


class SimulatedClock:
    """Time that moves only when advanced; periodic callbacks fire at their exact instants.

    `watch(listener)` registers hardware whose state follows time (a powercap file tree): it is
    told every new instant before any tick callback at that instant runs.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s
        self._queue: list[tuple[float, int, _SimulatedTicker]] = []
        self._order = itertools.count()
        self._listeners: list[Callable[[float], None]] = []

    def now(self) -> float:
        return self._now

    def watch(self, listener: Callable[[float], None]) -> None:
        self._listeners.append(listener)
        listener(self._now)

    def unwatch(self, listener: Callable[[float], None]) -> None:
        self._listeners.remove(listener)

    def _set(self, instant: float) -> None:
        if instant != self._now:
            self._now = instant
            for listener in list(self._listeners):
                listener(instant)

    def _schedule(self, ticker: _SimulatedTicker, due_s: float) -> None:
        if due_s <= self._now:
            ticker.fire()
            due_s = self._now + ticker.interval_s
        if ticker.active:
            heapq.heappush(self._queue, (due_s, next(self._order), ticker))

    def _unschedule(self, ticker: _SimulatedTicker) -> None:
        self._queue = [entry for entry in self._queue if entry[2] is not ticker]
        heapq.heapify(self._queue)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, firing every tick due on the way, in time order."""
        target = self._now + max(0.0, seconds)
        while self._queue and self._queue[0][0] <= target:
            due_s, _, ticker = heapq.heappop(self._queue)
            if not ticker.active:
                continue
            self._set(due_s)
            ticker.fire()
            if ticker.active:
                heapq.heappush(self._queue, (due_s + ticker.interval_s, next(self._order), ticker))
        self._set(target)

    def every(self, interval_s: float, callback: Callable[[], None], name: str) -> Ticker:
        return _SimulatedTicker(self, interval_s, callback)


WALL_CLOCK = WallClock()
_installed: list[Clock] = []


def current() -> Clock:
    """The clock measurement code should use now: a simulation's, else the wall clock."""
    return _installed[-1] if _installed else WALL_CLOCK


@contextmanager
def installed(clock: Clock) -> Iterator[Clock]:
    """Make `clock` the current one for the duration of the block."""
    _installed.append(clock)
    try:
        yield clock
    finally:
        _installed.remove(clock)
