"""Whose turn it is to run a window: the seam between an experiment and A/B interleaving.

`ExperimentSession` asks its `turns` object before every warmup step, the window calibration
and every measurement window (`with session.turns.turn("measure", index, passes) as grant:`),
and after each window whether to take another (`another_window`). On its own the answer is
always "now", and windows stop at `repeats` (`SOLO`); in A/B mode the head and base sides block
there until the other side's window is done, so only one side measures at a time and windows
alternate ABBA, and the head decides for both how many passes a window holds and when the
pairs have settled the verdict (the base is told to skip the window it waits on).

An idle baseline is a measurement too, but not a window: it must see both sides idle. In A/B
mode the head takes it while the base waits for its next test, and hands it over
(`share_baseline`) with that test's "run", so the base reuses the head's figure instead of
taking its own while the head loads a model on the same GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from pytest_llem.measure.baseline import Baseline
    from pytest_llem.schema.results import RepeatResult

Phase = Literal["warmup", "calibrate", "measure"]
PHASE_ORDER: tuple[Phase, ...] = ("warmup", "calibrate", "measure")


@dataclass
class Grant:
    """The answer to a turn: run it (or skip it: the other side has settled), with how many
    passes of the workload; the lifecycle puts the measured window's figures in `taken`."""

    run: bool = True
    passes: int = 1
    taken: RepeatResult | None = None


class WindowTurns(Protocol):
    def turn(self, phase: Phase, index: int, passes: int = 1) -> contextlib.AbstractContextManager[Grant]:
        """Block until this side may run window `index` of `phase`; the window runs inside.
        `passes` is this side's own calibrated count; the grant says which count to use."""
        ...

    def another_window(self, taken: int, minimum: int) -> bool:
        """After `taken` measured windows of this experiment: take one more?"""
        ...

    def share_baseline(self, key: str, baseline: Baseline) -> None:
        """This side has the idle baseline `key` (measured or cached); the other may reuse it."""
        ...


class Solo:
    """No other side: every turn is immediate; `repeats` windows."""

    @contextlib.contextmanager
    def turn(self, phase: Phase, index: int, passes: int = 1) -> Iterator[Grant]:
        yield Grant(True, passes)

    def another_window(self, taken: int, minimum: int) -> bool:
        return taken < minimum

    def share_baseline(self, key: str, baseline: Baseline) -> None:
        pass


SOLO = Solo()
