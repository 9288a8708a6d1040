"""How many passes of the workload make one measurement window last at least `min_window_s`.

Why calibrate: a window of one short pass reads a GPU's 100 ms energy counter in a few coarse
steps and is at the mercy of one scheduler hiccup (docs/gate.md).

From the warmup first: its steps are units of the same work (`units_per_pass` make a pass),
already timed, so a pass that clearly fills a window on its own (`WARMUP_MARGIN` x the minimum)
needs no extra timing - the common case of a real model, where that timing was a whole pass.
Otherwise passes are timed apart, like `timeit`'s autorange: 1, 10, 100, ... until they take a
tenth of the minimum, then scaled.

A cold first step alone is an upper bound, not a measure: it carries a fresh process's one-time
costs, which can be a hundred times a small model's pass. A count decided from it is
provisional: the first window, which times the same passes, checks it (`checked_by_window`),
and a window that came out short is measured again with the count it shows. Only a session on
its own can take a window again; an A/B side, whose windows alternate with the other side's,
decides from warm steps or timed passes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from pytest_llem.schema.limits import MAX_PASSES
from pytest_llem.schema.results import WarmupResult

# The shortest window by default: on CPU, long enough that a scheduler hiccup is a small part
# of it; on a GPU, 50 updates of a 100 ms energy counter (the coarsest NVML's total-energy
# counter gets), so the counter's steps are a 2% effect at most.
CPU_MIN_WINDOW_S = 1.0
GPU_MIN_WINDOW_S = 5.0

# A pass the warmup's steps put at twice `min_window_s` or more makes a window on its own: a 2x
# margin covers a noisy machine (adjacent windows here differ by 3-5%, a busy neighbour can slow
# a step far more) and batches of different lengths. A shorter pass is timed apart: there the
# count matters, and timing it costs at most about a window.
WARMUP_MARGIN = 2.0


@dataclass(frozen=True)
class Calibration:
    """The window's pass count, what it was decided from (stored as `window_calibration`), the
    window length it aims at, and whether the first window must confirm it (a cold step's)."""

    passes: int
    basis: str
    minimum_s: float = 0.0
    provisional: bool = False

    def checked_by_window(self, window_s: float) -> Calibration | None:
        """A provisional count whose first window lasted `window_s`: None where that window
        reached the minimum (keep it), else the count that window shows (take it again)."""
        if not self.provisional or window_s >= self.minimum_s:
            return None
        per_pass = window_s / self.passes
        passes = MAX_PASSES if per_pass <= 0 else math.ceil(self.minimum_s / per_pass)
        return replace(
            self,
            passes=max(self.passes + 1, min(MAX_PASSES, passes)),
            basis=f"{self.basis}; the first window held {self.passes} pass(es) in {window_s:.4g} s, "
            f"under {self.minimum_s:g} s: taken again with the count it shows",
            provisional=False,
        )


def default_minimum_s(min_window_s: float | None, uses_gpu: bool) -> float:
    """`min_window_s`, or the default for the device."""
    if min_window_s is not None:
        return min_window_s
    return GPU_MIN_WINDOW_S if uses_gpu else CPU_MIN_WINDOW_S


def from_warmup(
    warmup: WarmupResult | None, units_per_pass: int, minimum: float, cold_allowed: bool
) -> Calibration | None:
    """One pass when the warmup's timed steps put a pass at `WARMUP_MARGIN` x the minimum or
    more (the median of the warm steps; the cold first step alone only where `cold_allowed`,
    and then provisionally); None otherwise."""
    steps = [s for s in (warmup.latencies_s if warmup is not None else []) if s > 0]
    if not steps or units_per_pass < 1:
        return None
    warm = sorted(steps[1:])
    if not warm and not cold_allowed:
        return None
    per_unit = warm[len(warm) // 2] if warm else steps[0]
    if per_unit * units_per_pass < WARMUP_MARGIN * minimum:
        return None
    basis = (
        f"warmup: median of {len(warm)} warm step(s) {per_unit:.4g} s x {units_per_pass} per pass"
        if warm
        else f"warmup: the first (cold) step {per_unit:.4g} s x {units_per_pass} per pass"
    )
    return Calibration(1, basis, minimum, provisional=not warm)


def from_timed_passes(run_passes: Callable[[int], float], minimum: float) -> Calibration:
    """Passes timed 1, 10, 100, ... (`run_passes(count)` -> seconds) until they take a tenth of
    the minimum, then scaled to it. A clock that did not move (a no-op under the simulated
    clock) cannot be calibrated: one pass."""
    count, spent = 1, 0.0
    while True:
        spent = run_passes(count)
        if spent >= minimum / 10 or count >= MAX_PASSES:
            break
        count = min(MAX_PASSES, count * 10)
    if spent <= 0:
        return Calibration(1, f"timed {count} pass(es): the clock did not move", minimum)
    passes = max(1, min(MAX_PASSES, math.ceil(minimum * count / spent)))
    return Calibration(passes, f"timed {count} pass(es) in {spent:.4g} s", minimum)
