"""Summary statistics across repeats (scipy's Student-t interval, not a hand-rolled table)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytest_llem.schema.results import Stats


def summarise(values: Sequence[float]) -> Stats:
    """Mean, sample standard deviation, CV and a 95% t-interval; undefined parts are None."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Stats(n=n, mean=mean, std=0.0, cv=None, ci95_low=None, ci95_high=None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    cv = std / mean if mean else None
    from scipy import stats as scipy_stats  # imported here: scipy costs ~1 s at pytest startup

    sem = std / math.sqrt(n)
    if sem == 0:
        low = high = mean
    else:
        low, high = (float(x) for x in scipy_stats.t.interval(0.95, n - 1, loc=mean, scale=sem))
    return Stats(n=n, mean=mean, std=std, cv=cv, ci95_low=low, ci95_high=high)
