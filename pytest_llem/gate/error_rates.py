"""A/B sequences on a simulated noisy machine: how often the sequential gate cries wolf, and
how often it sees a real slowdown. Pure and seeded: no clock, no threads, no model.

The machine (`Noise`): every window's time is log-normal around the side's true time, with a
slow random-walk drift shared by both sides (the machine getting slower and faster over tens
of seconds) and, now and then, a one-sided transient that slows a single window by 5-40%
(another process waking up: what the 2-core VM shows, where pair ratios ranged 0.75-1.41).
Energy per token is the window's time times a power that has its own small noise. Windows run
ABBA, exactly as `plugin.ab.protocol` orders them, and the gate stops by `sequential.stop_reason`
with the verdicts of `sequential.sequential_verdict`: the code the gate runs, not a copy.

`benchmarks/gate/simulate_sequential.py` prints the table in docs/gate.md;
`tests/gate/test_sequential.py` fails when a false-alarm rate exceeds alpha.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from pytest_llem.gate.sequential import (
    ALPHA,
    DEFAULT_MAX_PAIRS,
    MedianSequence,
    PairPlan,
    sequential_verdict,
    stop_reason,
)

GATED = (("tokens_per_second", False), ("energy_per_output_token_j", True))


@dataclass(frozen=True)
class Noise:
    window_sd: float = 0.01  # log-normal spread of one window (1 s windows on the 2-core VM)
    drift_sd: float = 0.005  # random-walk step of the shared drift, per window
    transient_p: float = 0.05  # chance that a window is hit by a one-sided transient
    transient_low: float = 0.05  # its slowdown, uniform between these
    transient_high: float = 0.40
    power_sd: float = 0.005  # the power's own spread (energy = time x power)


@dataclass
class Outcome:
    """What the gate said for one sequence."""

    verdicts: dict[str, str]
    pairs: int
    reason: str


@dataclass
class Tally:
    """Outcomes of many sequences at one true slowdown."""

    slowdown_pct: float
    sequences: int = 0
    verdicts: dict[str, Counter[str]] = field(default_factory=dict)
    combined: Counter[str] = field(default_factory=Counter)
    pairs: list[int] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def rate(self, metric: str, verdict: str) -> float:
        return self.verdicts.get(metric, Counter())[verdict] / self.sequences if self.sequences else 0.0

    def combined_rate(self, verdict: str) -> float:
        return self.combined[verdict] / self.sequences if self.sequences else 0.0

    @property
    def mean_pairs(self) -> float:
        return sum(self.pairs) / len(self.pairs) if self.pairs else 0.0


def _combined(verdicts: dict[str, str]) -> str:
    for candidate in ("worse", "inconclusive", "better", "unchanged"):
        if candidate in verdicts.values():
            return candidate
    return "unchanged"


def simulate_sequence(
    rng: random.Random, slowdown_pct: float, plan: PairPlan, threshold_pct: float, noise: Noise
) -> Outcome:
    """One A/B sequence: pairs until `stop_reason` says stop (budget: the pair count only)."""
    head_shift = math.log(1.0 + slowdown_pct / 100.0)
    drift = 0.0

    def window(shift: float) -> tuple[float, float]:
        nonlocal drift
        drift += rng.gauss(0.0, noise.drift_sd)
        log_time = shift + drift + rng.gauss(0.0, noise.window_sd)
        if rng.random() < noise.transient_p:
            log_time += math.log(1.0 + rng.uniform(noise.transient_low, noise.transient_high))
        log_power = rng.gauss(0.0, noise.power_sd)
        return log_time, log_time + log_power  # (log time, log energy per token)

    sequences = {metric: MedianSequence() for metric, _ in GATED}
    pairs = 0
    while True:
        if pairs % 2 == 0:  # ABBA: even pairs base first
            base, head = window(0.0), window(head_shift)
        else:
            head, base = window(head_shift), window(0.0)
        sequences["tokens_per_second"].add(-(head[0] - base[0]))  # tokens/s ratio = 1 / time ratio
        sequences["energy_per_output_token_j"].add(head[1] - base[1])
        pairs += 1
        verdicts = {
            metric: sequential_verdict(sequences[metric], threshold_pct, lower_is_better)
            for metric, lower_is_better in GATED
        }
        reason = stop_reason(plan, pairs, list(verdicts.values()), 0.0, 0.0)
        if reason is not None:
            return Outcome(dict(verdicts), pairs, reason)


def simulate(
    slowdown_pct: float,
    sequences: int,
    seed: int = 0,
    plan: PairPlan | None = None,
    threshold_pct: float = 2.0,
    noise: Noise | None = None,
) -> Tally:
    """`sequences` independent A/B sequences at one true slowdown (0 = identical code)."""
    plan = plan or PairPlan(min_pairs=3, max_pairs=DEFAULT_MAX_PAIRS, budget_s=math.inf)
    noise = noise or Noise()
    rng = random.Random(seed)
    tally = Tally(slowdown_pct)
    for _ in range(sequences):
        outcome = simulate_sequence(rng, slowdown_pct, plan, threshold_pct, noise)
        tally.sequences += 1
        for metric, verdict in outcome.verdicts.items():
            tally.verdicts.setdefault(metric, Counter())[verdict] += 1
        tally.combined[_combined(outcome.verdicts)] += 1
        tally.pairs.append(outcome.pairs)
        tally.reasons[outcome.reason] += 1
    return tally


__all__ = ["ALPHA", "GATED", "Noise", "Outcome", "Tally", "simulate", "simulate_sequence"]
