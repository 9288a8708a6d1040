"""Pairs until the verdict is settled: an anytime-valid confidence sequence for the typical
ratio head/base, so the A/B gate may look after every pair without inflating false alarms.

Why not a fixed number of pairs with a t-test: the right number depends on the machine and
the workload, and a test repeated after every pair ("stop when p < 0.05") raises its false
alarm rate far above 5%. Why not the mean: on a shared machine one transient that slows one
side of one pair by 40% moves a mean and its variance a lot; it moves a median by one rank.

The method (Howard & Ramdas 2022, "Sequential estimation of quantiles with applications to
A/B-testing and best-arm identification", Bernoulli 28(3), section 3): let X_i be the log of
pair i's ratio head/base and m their median. The indicators 1{X_i <= m} are fair coins, so
S_t = sum(1{X_i <= m} - 1/2) is sub-Gaussian with variance proxy t/4 (Hoeffding's lemma).
The two-sided normal-mixture boundary (Howard, Ramdas, McAuliffe & Sekhon 2021,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2),
section 3.2) bounds it at every t at once: with probability at least 1 - alpha, for all t,

    |S_t| < sqrt((t/4 + rho) * log((t/4 + rho) / (rho * alpha**2)))      (Ville's inequality)

Inverting it gives order statistics [X_(lo), X_(hi)] that hold m at every t at once; their
running intersection is the confidence sequence. It is distribution-free (no normality, no
variance to estimate, heavy tails and wild pairs cost one rank each) and valid under
continuous monitoring, so the gate may stop at the first t where it is settled.
`rho` tunes where the boundary is tightest: 0.5 puts it at 10-20 pairs, where A/B stops on a
quiet machine. The always-valid p-value for "no change" is 1 / max_t M_t(0), M_t being the
mixture martingale at m = 0.

Verdicts (per gated metric, threshold PCT): "worse"/"better" when the sequence excludes "no
change" (anytime-valid significance) and the estimate (the median ratio) lies beyond PCT;
"unchanged" when the whole sequence lies within +-PCT; otherwise not settled yet. Identical
code therefore reads "worse" with probability at most alpha, however long the gate looks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pytest_llem.schema.comparison import Verdict

ALPHA = 0.05
MIXTURE_RHO = 0.5
METHOD = "median confidence sequence (Howard & Ramdas 2022)"
SETTLED: tuple[Verdict, ...] = ("worse", "better", "unchanged")
MAX_PAIRS_SUGGESTED = 1000
EXACT_SPREAD = 1e-9  # log-ratio spread that is float rounding, not measurement noise


def sign_boundary(t: int, alpha: float = ALPHA, rho: float = MIXTURE_RHO) -> float:
    """The normal-mixture bound on |S_t| for t fair-coin indicators (variance proxy t/4)."""
    v = t / 4.0 + rho
    return math.sqrt(v * math.log(v / (rho * alpha * alpha)))


def rank_bounds(t: int, alpha: float = ALPHA) -> tuple[int | None, int | None]:
    """1-based ranks (lo, hi) of the order statistics bounding the median after t values;
    None where the boundary leaves that side open (too few values yet).

    m is inside when t/2 - b < N(m) < t/2 + b, N(m) = #{X_i <= m}: N(m) >= lo with
    lo = floor(t/2 - b) + 1 means m >= X_(lo); N(m) <= hi - 1 with hi = ceil(t/2 + b) means
    m < X_(hi)."""
    b = sign_boundary(t, alpha)
    lo = math.floor(t / 2 - b) + 1
    hi = math.ceil(t / 2 + b)
    return (lo if lo >= 1 else None), (hi if hi <= t else None)


def _mixture(s: float, t: int, rho: float = MIXTURE_RHO) -> float:
    """The normal-mixture martingale for the sign process (the thing the boundary bounds)."""
    v = t / 4.0 + rho
    return math.sqrt(rho / v) * math.exp(s * s / (2.0 * v))


@dataclass
class MedianSequence:
    """The confidence sequence of the median log ratio, one pair at a time (O(log t) each)."""

    alpha: float = ALPHA
    values: list[float] = field(default_factory=list)  # sorted
    low: float = -math.inf  # running intersection, log scale
    high: float = math.inf
    _max_mixture: float = 1.0
    _at_or_below_zero: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    def add(self, log_ratio: float) -> None:
        bisect.insort(self.values, log_ratio)
        t = self.n
        lo, hi = rank_bounds(t, self.alpha)
        low = self.values[lo - 1] if lo is not None else -math.inf
        high = self.values[hi - 1] if hi is not None else math.inf
        if max(self.low, low) <= min(self.high, high):  # empty only inside the alpha event
            self.low, self.high = max(self.low, low), min(self.high, high)
        if log_ratio <= 0:
            self._at_or_below_zero += 1
        self._max_mixture = max(self._max_mixture, _mixture(self._at_or_below_zero - t / 2.0, t))

    @property
    def estimate(self) -> float:
        """The sample median of the log ratios (nan before the first pair)."""
        if not self.values:
            return math.nan
        mid = self.n // 2
        return self.values[mid] if self.n % 2 else (self.values[mid - 1] + self.values[mid]) / 2

    @property
    def exact(self) -> bool:
        """Two or more pairs, all with the same ratio up to float rounding (simulated hardware
        on its exact clock): nothing to bound."""
        return self.n >= 2 and self.values[-1] - self.values[0] <= EXACT_SPREAD

    def interval(self) -> tuple[float | None, float | None]:
        """(low, high) of the ratio head/base; None for a side still open."""
        if self.exact:
            return math.exp(self.values[0]), math.exp(self.values[-1])
        low = math.exp(self.low) if math.isfinite(self.low) else None
        high = math.exp(self.high) if math.isfinite(self.high) else None
        return low, high

    @property
    def p_value(self) -> float | None:
        """Always-valid p-value of "no change": 1 / the largest mixture value seen at m = 0."""
        if not self.values:
            return None
        if self.exact:
            return 1.0 if abs(self.values[0]) <= EXACT_SPREAD else 0.0
        return min(1.0, 1.0 / self._max_mixture)


def sequence_of(ratios: Iterable[float], alpha: float = ALPHA) -> MedianSequence:
    """The confidence sequence after these pair ratios, taken in this order."""
    found = MedianSequence(alpha)
    for ratio in ratios:
        found.add(math.log(ratio))
    return found


def sequential_verdict(found: MedianSequence, threshold_pct: float | None, lower_is_better: bool) -> Verdict:
    """The verdict of one metric now; "inconclusive" while it is not settled."""
    if threshold_pct is None:
        return "info"
    if found.n == 0:
        return "inconclusive"
    low, high = found.interval()
    limit = threshold_pct / 100.0
    ratio = math.exp(found.estimate)
    if low is not None and low > 1.0 and ratio >= 1.0 + limit:  # significantly higher
        return "worse" if lower_is_better else "better"
    if high is not None and high < 1.0 and ratio <= 1.0 - limit:  # significantly lower
        return "better" if lower_is_better else "worse"
    if low is not None and high is not None and low >= 1.0 - limit and high <= 1.0 + limit:
        return "unchanged"
    return "inconclusive"


def pairs_to_settle(found: MedianSequence, threshold_pct: float) -> int | None:
    """How many pairs would likely settle an unsettled metric: the sequence's half-width
    shrinks about like 1/sqrt(t); the estimate is kept. None when it cannot be told (a side
    still open, or the estimate on a boundary) or more than MAX_PAIRS_SUGGESTED are needed."""
    low, high = found.interval()
    if low is None or high is None or found.n < 2:
        return None
    half = (math.log(high) - math.log(low)) / 2
    center = found.estimate
    limit = math.log(1 + threshold_pct / 100)
    # heading for "unchanged": the far side must come inside +-limit; for worse or better:
    # "no change" must leave the sequence
    distance = limit - abs(center) if abs(center) < limit else abs(center)
    if distance <= 0 or half <= 0:
        return None
    needed = math.ceil(found.n * (half / distance) ** 2)
    return max(found.n + 1, needed) if needed <= MAX_PAIRS_SUGGESTED else None


StopReason = str  # "settled", "max pairs", "budget", "base ended"
# A/B's defaults (--llem-ab-max-pairs, --llem-ab-budget-s). Why 60 and 300 s: in the seeded
# simulation (docs/gate.md) identical code at the window noise measured on the 2-core VM
# settles as "unchanged" within 60 pairs in nearly every sequence, where 40 leave a few percent
# inconclusive; with 1 s windows 60 pairs take about 2-3 minutes, inside the budget.
DEFAULT_MAX_PAIRS = 60
DEFAULT_BUDGET_S = 300.0


@dataclass(frozen=True)
class PairPlan:
    """How long A/B keeps adding pairs: at least `min_pairs` (the experiment's repeats), at
    most `max_pairs`, and no new pair once `budget_s` of this experiment's windows are spent."""

    min_pairs: int
    max_pairs: int
    budget_s: float


def stop_reason(
    plan: PairPlan, pairs: int, verdicts: Sequence[Verdict], elapsed_s: float, pair_s: float
) -> StopReason | None:
    """Why the sequence stops after `pairs` pairs, or None to take another pair.

    `elapsed_s` is the time since the first measured window, `pair_s` the last pair's length:
    a pair that would end beyond the budget is not started."""
    if pairs < plan.min_pairs:
        return None
    if all(v in SETTLED for v in verdicts):  # no gated metric: nothing to settle
        return "settled"
    if pairs >= plan.max_pairs:
        return "max pairs"
    if elapsed_s + pair_s > plan.budget_s:
        return "budget"
    return None
