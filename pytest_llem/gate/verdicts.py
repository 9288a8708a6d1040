"""Verdicts from an interval, and the pieces every comparison shares: pure functions.

A/B mode measures base and head in adjacent windows (ABBA), so machine drift moves both
windows of a pair alike and cancels in their ratio head/base (`pair_ratios`); its sequential
statistics are in `sequential.py`.

`verdict()` is the stored-baseline mode's rule (compare.py): "worse"/"better" only when the
change is significant and the whole interval lies beyond the threshold, "unchanged" only when
the whole interval lies within +-threshold, otherwise "inconclusive" - with an estimate of how
many repeats would likely settle it (`repeats_to_settle`). `combine` and `headline` serve both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytest_llem.schema.comparison import Verdict

ALPHA = 0.05
MAX_REPEATS_SUGGESTED = 1000


def pair_ratios(base: Sequence[float | None], head: Sequence[float | None]) -> list[float]:
    """head/base for each adjacent pair of windows; pairs with a missing or non-positive value
    on either side are dropped (a ratio of them means nothing), extra windows are unpaired."""
    return [
        h / b for b, h in zip(base, head, strict=False) if b is not None and h is not None and b > 0 and h > 0
    ]


def repeats_to_settle(
    n: int, ratio: float, low: float | None, high: float | None, threshold_pct: float
) -> int | None:
    """How many repeats would likely make the interval clear the nearest decision boundary.

    The interval's half-width shrinks like 1/sqrt(n) on the log scale; the estimate is kept.
    None when it cannot be estimated (no interval) or is hopeless (the estimate sits on a
    boundary, or more than MAX_REPEATS_SUGGESTED would be needed)."""
    if low is None or high is None or n < 2 or low <= 0 or ratio <= 0:
        return None
    half = (math.log(high) - math.log(low)) / 2
    center = math.log(ratio)
    upper, lower = math.log(1 + threshold_pct / 100), math.log(max(1e-9, 1 - threshold_pct / 100))
    if lower < center < upper:
        distance = min(upper - center, center - lower)
    else:
        distance = center - upper if center >= upper else lower - center
    if distance <= 0 or half <= 0:
        return None
    needed = math.ceil(n * (half / distance) ** 2)
    return max(n + 1, needed) if needed <= MAX_REPEATS_SUGGESTED else None


def verdict(
    low: float | None,
    high: float | None,
    p_value: float | None,
    threshold_pct: float | None,
    lower_is_better: bool,
    alpha: float = ALPHA,
) -> Verdict:
    """The honest verdict for one metric from its interval of the ratio head/base.

    Ungated metrics (no threshold) are "info": shown, never worse or better."""
    if threshold_pct is None:
        return "info"
    if low is None or high is None:
        return "inconclusive"
    limit = threshold_pct / 100.0
    significant = p_value is not None and p_value < alpha
    if significant and low > 1.0 + limit:
        return "worse" if lower_is_better else "better"
    if significant and high < 1.0 - limit:
        return "better" if lower_is_better else "worse"
    if low >= 1.0 - limit and high <= 1.0 + limit:
        return "unchanged"
    return "inconclusive"


VERDICT_ORDER: tuple[Verdict, ...] = ("worse", "inconclusive", "better", "unchanged")


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict for an experiment from its gated metrics: worse wins, then inconclusive
    (a metric that could not be settled), then better; unchanged only when all are."""
    for candidate in VERDICT_ORDER:
        if candidate in verdicts:
            return candidate
    return "unchanged"


def headline(verdicts: Sequence[str]) -> str:
    """'2 worse, 1 inconclusive, 9 unchanged': counts in a fixed order, zeros left out."""
    order = ("worse", "inconclusive", "better", "unchanged", "new", "missing", "not comparable")
    counts = {v: verdicts.count(v) for v in order if verdicts.count(v)}
    return ", ".join(f"{count} {name}" for name, count in counts.items()) or "no experiments"
