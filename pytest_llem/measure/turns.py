"""Whose turn it is to run a window: the seam between an experiment and A/B interleaving.

`ExperimentSession` asks its `turns` object before every warmup step and every measurement
window (`with session.turns.turn("measure", index): ...`). On its own the answer is always
"now" (`SOLO`); in A/B mode the head and base sides block there until the other side's
window is done, so only one side measures at a time and windows alternate ABBA.

An idle baseline is a measurement too, but not a window: it must see both sides idle. In A/B
mode the head takes it while the base waits for its next test, and hands it over
(`share_baseline`) with that test's "run", so the base reuses the head's figure instead of
taking its own while the head loads a model on the same GPU.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from pytest_llem.measure.baseline import Baseline

Phase = Literal["warmup", "measure"]


class WindowTurns(Protocol):
    def turn(self, phase: Phase, index: int) -> contextlib.AbstractContextManager[None]:
        """Block until this side may run window `index` of `phase`; the window runs inside."""
        ...

    def share_baseline(self, key: str, baseline: Baseline) -> None:
        """This side has the idle baseline `key` (measured or cached); the other may reuse it."""
        ...


class Solo:
    """No other side: every turn is immediate."""

    def turn(self, phase: Phase, index: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def share_baseline(self, key: str, baseline: Baseline) -> None:
        pass


SOLO = Solo()
