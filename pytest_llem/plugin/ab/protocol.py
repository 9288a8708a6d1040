"""The window-by-window conversation between the head (this session) and the base worker.

The head drives; the base follows. Messages are tuples over one `multiprocessing` connection:

    head -> base   ("run", nodeid, next_nodeid, baselines)
                                                  run this test now, reusing the head's idle
                                                  baselines {key: Baseline}
                   ("go", passes)                 measure the window you are waiting on, with
                                                  the head's calibrated passes (None: your own)
                   ("skip",)                      the pairs have settled: no more windows
                   ("stop",)                      no more tests
    base -> head   ("collected", [nodeid, ...], [leaked module, ...])
                   ("ready", phase, index, wants) blocked until "go" or "skip"; `wants`: the
                                                  base has fewer windows than its own repeats
                   ("done", phase, index, window) window finished, its figures (a dict)
                   ("result", result_json)        one experiment of the running test
                   ("finished", nodeid, outcome)  the test is over; blocked on the next command

Only one side measures at a time: the head runs a window only while the base is blocked (it
sent "ready" or "finished" and waits on a read), and the base runs one only while the head is
blocked reading "done". Waiting is a blocking read on a socket: no polling, no CPU burnt.

The head sends "run" only when it first needs the base (its first turn, or the test's end),
not when its own test starts: the head's pre-flight and idle baseline therefore run while
the base is blocked waiting for its next command, and the baseline goes along with "run".

Measurement windows alternate ABBA (A = base, B = head): pair k runs base first when k is
even and head first when k is odd, so a linear drift over a pair of pairs cancels. Warmup steps
and the calibration are interleaved the same way. The head decides how many passes a window
holds (its calibration; the base follows) and, after each pair, whether the verdict has settled
(`judge` and `plan`, from the gate): then the base's next window is skipped. When one side has
more warmup steps than the other, or the base more than the head's pairs of its own `repeats`,
the extra ones run alone and are left unpaired.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pytest_llem.gate.sequential import PairPlan, stop_reason
from pytest_llem.hardware import clock as clocks
from pytest_llem.measure.turns import PHASE_ORDER, Grant, Phase
from pytest_llem.schema.comparison import Verdict

if TYPE_CHECKING:
    from pytest_llem.measure.baseline import Baseline
    from pytest_llem.measure.progress import Reports

# the gate's verdicts of the pairs so far, and a line for the progress display
Judge = Callable[[Sequence[dict[str, Any]], Sequence[dict[str, Any]]], tuple[list[Verdict], str]]

BASE, HEAD = "A", "B"


class Connection(Protocol):
    def send(self, obj: Any) -> None: ...

    def recv(self) -> Any: ...


class ProtocolError(RuntimeError):
    """The other side said something out of turn (a bug, or a base worker that died)."""


def base_goes_first(index: int) -> bool:
    """ABBA: pairs 0, 2, 4, ... start with the base, pairs 1, 3, 5, ... with the head."""
    return index % 2 == 0


class BaseTurns:
    """The base worker's side: announce each window, wait for "go" (or "skip"), report "done"
    with the window's figures, so the head can judge the pairs as they come."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._wants = True  # fewer measured windows than this side's own repeats

    def share_baseline(self, key: str, baseline: Baseline) -> None:
        """The base's baselines stay here: the head takes its own while the base is idle."""

    def another_window(self, taken: int, minimum: int) -> bool:
        """Always ready for one more: the head answers the next turn with "go" or "skip"."""
        self._wants = taken < minimum
        return True

    @contextlib.contextmanager
    def turn(self, phase: Phase, index: int, passes: int = 1) -> Iterator[Grant]:
        wants = self._wants if phase == "measure" and index > 0 else True
        self._connection.send(("ready", phase, index, wants))
        message = self._connection.recv()  # blocks while the head measures
        if message == ("skip",):
            yield Grant(False, passes)
            return
        if not (isinstance(message, tuple) and len(message) == 2 and message[0] == "go"):
            raise ProtocolError(f"base worker expected ('go', passes) or ('skip',), got {message!r}")
        grant = Grant(True, int(message[1]) if message[1] else passes)
        try:
            yield grant
        finally:
            window = grant.taken.model_dump(mode="json") if grant.taken is not None else None
            self._connection.send(("done", phase, index, window))


@dataclass
class TestExchange:
    """What the base did for one test, as the head saw it."""

    nodeid: str
    base_results: list[str] = field(default_factory=list)  # ExperimentResult JSON, in order
    outcome: str | None = None  # None while the base test is still running
    order: list[str] = field(default_factory=list)  # measured windows: "A" base, "B" head


@dataclass
class PairSequence:
    """The measured pairs of the head's current experiment, as the gate judges them."""

    base: list[dict[str, Any]] = field(default_factory=list)
    head: list[dict[str, Any]] = field(default_factory=list)
    started_s: float | None = None  # the first measured turn's start, on the session's clock
    turn_s: float = 0.0  # the last pair's length
    open: bool = False  # the head is still taking pairs
    stopped: tuple[int, str] | None = None  # (pairs, why) once the head stopped


class HeadTurns:
    """The head's side. Implements `WindowTurns` for the head's ExperimentSession and pumps
    the base's messages; after any failure of the base it carries on alone (`broken`).

    While it waits it says so through the session's progress (`reports`): "A/B: base repeat 3"
    or "A/B: waiting for the base", so a live line never shows the head's last stage growing
    while the base works; the head's own stage is set again inside its next turn. While it
    sequences pairs the line shows the pairs taken and the current interval (`judge`)."""

    def __init__(
        self,
        connection: Connection,
        reports: Reports | None = None,
        judge: Judge | None = None,
        plan: PairPlan | None = None,
    ) -> None:
        self._connection = connection
        self._reports = reports
        self.judge = judge  # None: a fixed `repeats` pairs, as without the gate
        self.plan = plan  # max pairs and budget; min pairs is each experiment's repeats
        self._pending: tuple[Any, ...] | None = None  # a base "ready" read but not yet answered
        self.test: TestExchange | None = None
        self.broken: str | None = None
        self.stopped = False
        self._counts: dict[str, int] = {}
        self._next_nodeid: str | None = None
        self._started = False  # "run" sent for the current test
        self._baselines: dict[str, Baseline] = {}
        self._passes: int | None = None  # the head's calibrated passes, sent with "go"
        self.pairs = PairSequence()

    # -- plumbing ---------------------------------------------------------------------
    def _recv(self) -> tuple[Any, ...] | None:
        if self.broken is not None:
            return None
        try:
            message = self._connection.recv()
        except (EOFError, OSError) as exc:
            self.broken = f"base worker stopped answering ({type(exc).__name__})"
            return None
        if not isinstance(message, tuple) or not message:
            self.broken = f"base worker sent {message!r}"
            return None
        return message

    def _send(self, message: tuple[Any, ...]) -> bool:
        if self.broken is not None:
            return False
        try:
            self._connection.send(message)
        except (OSError, ValueError) as exc:
            self.broken = f"base worker unreachable ({type(exc).__name__})"
            return False
        return True

    def _show(self, stage: str, step: int | None = None) -> None:
        if self._reports is not None:
            self._reports.progress.update(stage, step)

    def _running(self) -> bool:
        return self.broken is None and self.test is not None and self.test.outcome is None

    def _next_blocking(self) -> tuple[Any, ...] | None:
        """Read until the base is blocked: its "ready" (returned, kept pending) or the end of
        its test (None). Results read on the way are kept."""
        if self._pending is not None:
            return self._pending
        if self._running():
            self._show("A/B: waiting for the base")
        while self._running():
            message = self._recv()
            if message is None:
                return None
            assert self.test is not None
            kind = message[0]
            if kind == "ready":
                self._pending = message
                return message
            if kind == "result":
                self.test.base_results.append(str(message[1]))
            elif kind == "finished":
                self.test.outcome = str(message[2])
            else:
                self.broken = f"base worker sent {kind!r} out of turn"
        return None

    def _grant(self) -> None:
        """Let the base run the window it waits on; block until it is done."""
        assert self._pending is not None and self.test is not None
        _, phase, index, _wants = self._pending
        self._pending = None
        self._show(f"A/B: base {'repeat' if phase == 'measure' else phase}", int(index) + 1)
        if not self._send(("go", self._passes if phase == "measure" else None)):
            return
        message = self._recv()
        if message is None:
            return
        if message[:1] != ("done",) or len(message) != 4:
            self.broken = f"base worker sent {message!r} instead of ('done', ...)"
            return
        if phase == "measure":
            self.test.order.append(BASE)
            if self.pairs.open and isinstance(message[3], dict):
                self.pairs.base.append(message[3])

    def _answer_alone(self) -> None:
        """Answer the base's pending window outside a head turn: a warmup or calibration step
        runs alone; a measured window runs alone only while the base has fewer than its own
        repeats (`wants`), otherwise it is skipped: the head's pairs have settled."""
        assert self._pending is not None
        phase, wants = self._pending[1], self._pending[3]
        if phase == "measure" and not wants:
            self._pending = None
            self._send(("skip",))
        else:
            self._grant()

    def _grant_earlier_phases(self, phase: Phase) -> tuple[Any, ...] | None:
        """The base's pending window when it is in `phase`; base steps of an earlier phase
        than the head's run alone first. None: the head runs alone (base done, or already in
        a later phase)."""
        while True:
            ready = self._next_blocking()
            if ready is None:
                return None
            if ready[1] == phase:
                return ready
            if PHASE_ORDER.index(ready[1]) < PHASE_ORDER.index(phase):
                self._answer_alone()
                continue
            return None  # the base is ahead: the head runs this step alone

    def _ensure_started(self) -> None:
        """Send the current test's "run" (once), with the idle baselines the head has."""
        if self._started or self.test is None:
            return
        self._started = True
        if not self._send(("run", self.test.nodeid, self._next_nodeid, dict(self._baselines))):
            self.test.outcome = "not run"

    # -- WindowTurns ------------------------------------------------------------------------
    def share_baseline(self, key: str, baseline: Baseline) -> None:
        self._baselines[key] = baseline  # frozen; pickled to the base with "run"

    @contextlib.contextmanager
    def turn(self, phase: Phase, index: int, passes: int = 1) -> Iterator[Grant]:
        self._ensure_started()
        clock = clocks.current()
        if phase == "measure":
            if index == 0:  # a new experiment: a new sequence of pairs
                self.pairs = PairSequence(started_s=clock.now(), open=True)
            self._passes = passes
        started = clock.now()
        # ABBA by this test's own count of turns, not the caller's index: it keeps alternating
        # across several experiments of one test and across benchmark(llem.run) rounds
        count = self._counts.get(phase, 0)
        self._counts[phase] = count + 1
        ready = self._grant_earlier_phases(phase)
        if ready is not None and base_goes_first(count):
            self._grant()
            self._next_blocking()  # the base is blocked again before the head measures
            ready = None
        grant = Grant(True, passes)
        yield grant
        if phase == "measure" and self.test is not None:
            self.test.order.append(HEAD)
            if grant.taken is not None and self.pairs.open:
                self.pairs.head.append(grant.taken.model_dump(mode="json"))
        if ready is not None:
            self._grant()
        if phase == "measure":
            self.pairs.turn_s = clock.now() - started

    def another_window(self, taken: int, minimum: int) -> bool:
        """The head's decision for both sides: another pair, or stop (and skip the base's
        next window). Without a judge, or alone, `repeats` windows as ever."""
        pairs = self.pairs
        why: str | None
        if self.judge is None or self.plan is None or self.broken is not None:
            why = None if taken < minimum else "repeats"
        elif len(pairs.base) < len(pairs.head):  # the base took no window beside the last one
            why = None if taken < minimum else "base ended"
        else:
            verdicts, line = self.judge(pairs.base, pairs.head)
            self._show(f"A/B pair {len(pairs.head)}: {line}")
            plan = PairPlan(max(minimum, 1), max(minimum, self.plan.max_pairs), self.plan.budget_s)
            elapsed = clocks.current().now() - (pairs.started_s or 0.0)
            why = stop_reason(plan, len(pairs.head), verdicts, elapsed, pairs.turn_s)
        if why is None:
            return True
        pairs.open = False
        pairs.stopped = (min(len(pairs.base), len(pairs.head)), why)
        self._release_base()
        return False

    def _release_base(self) -> None:
        """The head stopped: answer the base's next measured window now (skip, or alone while
        it is short of its own repeats), so it never waits on a head that has moved on."""
        while self._running():
            ready = self._next_blocking()
            if ready is None or ready[1] != "measure":
                return
            skipping = not ready[3]
            self._answer_alone()
            if skipping:
                return

    def take_stop(self) -> tuple[int, str] | None:
        """(pairs, why the sequence stopped) of the last experiment, once."""
        stopped, self.pairs.stopped = self.pairs.stopped, None
        return stopped

    # -- per test ---------------------------------------------------------------------------
    def start_test(self, nodeid: str, next_nodeid: str | None) -> None:
        """The head starts `nodeid`; the base is told when the head first needs it."""
        self.test = TestExchange(nodeid)
        self._pending = None
        self._counts = {}
        self._next_nodeid = next_nodeid
        self._started = False
        self.pairs = PairSequence()

    def base_result(self, index: int) -> str | None:
        """The base's `index`-th experiment of the running test (JSON), running any base
        windows that have no head partner; None when the base test produced no such result."""
        test = self.test
        if test is None:
            return None
        self._ensure_started()
        while len(test.base_results) <= index and self._running():
            ready = self._next_blocking()
            if ready is not None:
                self._answer_alone()
        return test.base_results[index] if len(test.base_results) > index else None

    def take_order(self) -> str:
        """The measured-window order since the last call, e.g. "ABBAABBA"."""
        if self.test is None:
            return ""
        order, self.test.order = "".join(self.test.order), []
        return order

    def end_test(self) -> TestExchange | None:
        """Let the base finish the test alone (its unpaired windows included)."""
        self._ensure_started()
        test = self.test
        while self._running():
            if self._next_blocking() is not None:
                self._answer_alone()
        self.test = None
        if test is not None and test.outcome is None:
            test.outcome = self.broken or "unknown"
        return test

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._send(("stop",))
