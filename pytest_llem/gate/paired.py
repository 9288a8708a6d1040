"""Paired statistics and honest verdicts: pure functions, numbers in, numbers out.

A/B mode measures base and head in adjacent windows (ABBA), so machine drift moves both
windows of a pair alike and cancels in their ratio head/base. The statistics work on the log
of those per-pair ratios:

- 6 or more pairs: Wilcoxon signed-rank test (scipy) and the Hodges-Lehmann estimate of the
  typical ratio with its exact distribution-free interval (Walsh averages). Ranks ignore the
  burst of a busy neighbour that hits one pair.
- 2 to 5 pairs: a signed-rank test cannot reach p < 0.05 below 6 pairs (its smallest
  two-sided p is 2 / 2**n), so a paired t-test on the log ratios and its t-interval are used.

`verdict()` is shared with the stored-baseline mode (compare.py): "worse"/"better" only when
the change is significant and the whole interval lies beyond the threshold, "unchanged" only
when the whole interval lies within +-threshold, otherwise "inconclusive" - with an estimate
of how many repeats would likely settle it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_llem.schema.comparison import Verdict

ALPHA = 0.05
RANK_TEST_MIN_PAIRS = 6
MAX_REPEATS_SUGGESTED = 1000


@dataclass(frozen=True)
class PairedStats:
    """The typical ratio head/base of paired windows, its interval and the test behind it."""

    n_pairs: int
    ratio: float
    ratio_low: float | None
    ratio_high: float | None
    confidence: float | None  # achieved coverage of the interval (exact intervals are discrete)
    p_value: float | None
    test: str


def pair_ratios(base: Sequence[float | None], head: Sequence[float | None]) -> list[float]:
    """head/base for each adjacent pair of windows; pairs with a missing or non-positive value
    on either side are dropped (a ratio of them means nothing), extra windows are unpaired."""
    return [
        h / b for b, h in zip(base, head, strict=False) if b is not None and h is not None and b > 0 and h > 0
    ]


def _signed_rank_counts(n: int) -> list[int]:
    """Number of sign assignments giving each value of the signed-rank statistic W+ (0..M)."""
    total = n * (n + 1) // 2
    counts = [1] + [0] * total
    for rank in range(1, n + 1):
        for value in range(total, rank - 1, -1):
            counts[value] += counts[value - rank]
    return counts


def hodges_lehmann(logs: Sequence[float], alpha: float = ALPHA) -> tuple[float, float, float, float]:
    """(estimate, low, high, achieved confidence) on the log scale: the median of the Walsh
    averages and the exact interval [W(c), W(M+1-c)] from the signed-rank null distribution.
    With fewer than 6 values the widest interval (min..max) covers less than 95%; the
    achieved confidence says so."""
    n = len(logs)
    walsh = sorted((logs[i] + logs[j]) / 2 for i in range(n) for j in range(i, n))
    estimate = statistics.median(walsh)
    counts = _signed_rank_counts(n)
    space = 2**n
    cumulative = 0
    c = 1
    for k, count in enumerate(counts):  # largest c with P(W+ <= c - 1) <= alpha / 2
        cumulative += count
        if cumulative / space > alpha / 2:
            c = max(1, k)
            break
    tail = sum(counts[:c]) / space
    return estimate, walsh[c - 1], walsh[len(walsh) - c], 1.0 - 2.0 * tail


def paired_stats(ratios: Sequence[float]) -> PairedStats:
    """Test and interval of the typical ratio head/base from per-pair ratios."""
    n = len(ratios)
    if n == 0:
        return PairedStats(0, math.nan, None, None, None, None, "none (no pairs)")
    logs = [math.log(r) for r in ratios]
    if n == 1:
        return PairedStats(1, ratios[0], None, None, None, None, "none (one pair)")
    if all(x == logs[0] for x in logs):  # no spread: the ratio is exact
        p = 1.0 if logs[0] == 0 else (0.0 if n >= RANK_TEST_MIN_PAIRS else None)
        return PairedStats(n, ratios[0], ratios[0], ratios[0], 1.0, p, "exact (no spread)")
    from scipy import stats as scipy_stats  # imported here: scipy costs ~1 s at pytest startup

    if n >= RANK_TEST_MIN_PAIRS:
        nonzero = [x for x in logs if x != 0]  # zero differences carry no sign (Wilcoxon's rule)
        p = 1.0 if len(nonzero) < 2 else float(scipy_stats.wilcoxon(nonzero).pvalue)
        estimate, low, high, confidence = hodges_lehmann(logs)
        return PairedStats(
            n, math.exp(estimate), math.exp(low), math.exp(high), confidence, p, "wilcoxon signed-rank"
        )
    mean = statistics.fmean(logs)
    sem = statistics.stdev(logs) / math.sqrt(n)
    t = float(scipy_stats.t.ppf(1 - ALPHA / 2, n - 1))
    p = float(scipy_stats.ttest_1samp(logs, 0.0).pvalue)
    return PairedStats(
        n,
        math.exp(mean),
        math.exp(mean - t * sem),
        math.exp(mean + t * sem),
        1 - ALPHA,
        p,
        "paired t (log ratios)",
    )


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
