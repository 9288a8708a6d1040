"""Scripted signals over simulated time: constant, steps, or any function of time.

Each trace gives its value at time t and its exact integral over [t0, t1], so a simulated
energy counter is consistent with the simulated power by construction.
"""

from __future__ import annotations

import bisect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy import integrate


class Trace(ABC):
    @abstractmethod
    def value(self, t: float) -> float:
        """The signal at simulated time t."""

    @abstractmethod
    def integral(self, t0: float, t1: float) -> float:
        """The exact integral over [t0, t1]."""

    def mean(self, t0: float, t1: float) -> float:
        return self.value(t1) if t1 <= t0 else self.integral(t0, t1) / (t1 - t0)


@dataclass(frozen=True)
class Constant(Trace):
    level: float

    def value(self, t: float) -> float:
        return self.level

    def integral(self, t0: float, t1: float) -> float:
        return self.level * (t1 - t0)


class Steps(Trace):
    """Piecewise constant: `points` are (start_time, level), the first level holds before it."""

    def __init__(self, points: Sequence[tuple[float, float]]) -> None:
        if not points:
            raise ValueError("Steps needs at least one (time, level) point")
        ordered = sorted(points)
        self.times = [t for t, _ in ordered]
        self.levels = [level for _, level in ordered]

    def value(self, t: float) -> float:
        index = bisect.bisect_right(self.times, t) - 1
        return self.levels[max(index, 0)]

    def integral(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return 0.0
        edges = [t0] + [t for t in self.times if t0 < t < t1] + [t1]
        return sum(self.value(a) * (b - a) for a, b in itertools.pairwise(edges))


class Function(Trace):
    """Any smooth function of time, integrated numerically (scipy quad)."""

    def __init__(self, function: Callable[[float], float]) -> None:
        self.function = function

    def value(self, t: float) -> float:
        return float(self.function(t))

    def integral(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return 0.0
        return float(integrate.quad(self.function, t0, t1, limit=200)[0])


class Scaled(Trace):
    """`inner` times a piecewise-constant factor: `steps` are (start_time, factor), factor 1
    before the first. A board's power under a power limit or locked clocks set at those times."""

    def __init__(self, inner: Trace, steps: Sequence[tuple[float, float]]) -> None:
        self.inner = inner
        latest = dict(steps)  # two settings at one instant: the later one holds
        self.factor = Steps([(float("-inf"), 1.0), *latest.items()])

    def value(self, t: float) -> float:
        return self.inner.value(t) * self.factor.value(t)

    def integral(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return 0.0
        edges = [t0] + [t for t in self.factor.times if t0 < t < t1] + [t1]
        return sum(self.factor.value(a) * self.inner.integral(a, b) for a, b in itertools.pairwise(edges))


def as_trace(value: Trace | float | Callable[[float], float] | None) -> Trace | None:
    if value is None or isinstance(value, Trace):
        return value
    if callable(value):
        return Function(value)
    return Constant(float(value))
