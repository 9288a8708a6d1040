"""Whose turn it is to run a window: the seam between an experiment and A/B interleaving.

`ExperimentSession` asks its `turns` object before every warmup step and every measurement
window (`with session.turns.turn("measure", index): ...`). On its own the answer is always
"now" (`SOLO`); in A/B mode the head and base sides block there until the other side's
window is done, so only one side measures at a time and windows alternate ABBA.
"""

from __future__ import annotations

import contextlib
from typing import Literal, Protocol

Phase = Literal["warmup", "measure"]


class WindowTurns(Protocol):
    def turn(self, phase: Phase, index: int) -> contextlib.AbstractContextManager[None]:
        """Block until this side may run window `index` of `phase`; the window runs inside."""
        ...


class Solo:
    """No other side: every turn is immediate."""

    def turn(self, phase: Phase, index: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


SOLO = Solo()
