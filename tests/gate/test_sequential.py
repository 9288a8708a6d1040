"""The A/B gate's sequential statistics: the confidence sequence, the verdicts, the stopping
rule, and the seeded simulation that shows the false-alarm rate holds under continuous
monitoring (the table in docs/gate.md)."""

import itertools
import math
import random

import pytest

from pytest_llem.gate.error_rates import Noise, simulate
from pytest_llem.gate.sequential import (
    ALPHA,
    MedianSequence,
    PairPlan,
    pairs_to_settle,
    rank_bounds,
    sequence_of,
    sequential_verdict,
    sign_boundary,
    stop_reason,
)
from pytest_llem.schema.comparison import Verdict


def test_the_boundary_leaves_the_median_open_until_enough_pairs_then_narrows() -> None:
    assert rank_bounds(5) == (None, None)  # 5 pairs cannot bound a median at 95%, any time
    lo, hi = rank_bounds(20)
    assert lo is not None and hi is not None and 1 <= lo < 10 < hi <= 20
    later_lo, _ = rank_bounds(40)
    assert later_lo is not None and later_lo > lo  # more pairs: inner order statistics
    assert sign_boundary(40) > sign_boundary(20)  # the bound on |S_t| grows like sqrt(t log t)


def test_three_pairs_never_decide_whatever_they_say() -> None:
    """A paired t-test on 3 pairs read -13% on all three as significant; the sequence cannot."""
    found = sequence_of([0.87, 0.869, 0.871])
    assert found.interval() == (None, None)
    assert sequential_verdict(found, 2.0, False) == "inconclusive"


def test_a_steady_slowdown_is_worse_and_identical_pairs_are_unchanged() -> None:
    rng = random.Random(1)
    slower = sequence_of([1.10 * math.exp(rng.gauss(0, 0.01)) for _ in range(20)])
    low, high = slower.interval()
    assert low is not None and high is not None and 1.0 < low < 1.10 < high
    assert sequential_verdict(slower, 2.0, True) == "worse"  # e.g. J/token up
    assert sequential_verdict(slower, 2.0, False) == "better"  # tokens/s up
    assert slower.p_value is not None and slower.p_value < ALPHA
    same = sequence_of([math.exp(rng.gauss(0, 0.005)) for _ in range(30)])
    assert sequential_verdict(same, 2.0, True) == "unchanged"
    assert same.p_value is not None and same.p_value > ALPHA


def test_a_change_that_is_real_but_inside_the_threshold_is_not_worse() -> None:
    found = sequence_of([1.01 * math.exp(random.Random(2).gauss(0, 0.001)) for _ in range(40)])
    low, _ = found.interval()
    assert low is not None and low > 1.0  # significant...
    assert sequential_verdict(found, 2.0, True) == "unchanged"  # ...and within 2%


def test_one_wild_pair_moves_the_median_one_rank() -> None:
    ratios = [1.0 + 0.001 * (i % 3 - 1) for i in range(29)] + [1.41]
    assert sequential_verdict(sequence_of(ratios), 2.0, True) == "unchanged"


def test_exact_ratios_from_simulated_hardware_settle_at_once() -> None:
    found = sequence_of([4.0, 4.0 * (1 + 1e-12)])
    assert found.exact and found.interval()[0] == pytest.approx(4.0)
    assert sequential_verdict(found, 2.0, True) == "worse"
    assert sequential_verdict(sequence_of([1.0, 1.0]), 2.0, True) == "unchanged"


def test_the_running_intersection_never_widens() -> None:
    found = MedianSequence()
    widths = []
    for value in [0.02, -0.01, 0.015, 0.0, 0.3, -0.2, 0.01] * 6:
        found.add(value)
        if math.isfinite(found.low) and math.isfinite(found.high):
            widths.append(found.high - found.low)
    assert widths and all(b <= a for a, b in itertools.pairwise(widths))


def test_pairs_to_settle_grows_as_the_estimate_nears_the_threshold() -> None:
    rng = random.Random(3)
    near = sequence_of([1.015 * math.exp(rng.gauss(0, 0.02)) for _ in range(20)])
    far = sequence_of([1.0 * math.exp(rng.gauss(0, 0.02)) for _ in range(20)])
    assert sequential_verdict(near, 2.0, True) == sequential_verdict(far, 2.0, True) == "inconclusive"
    far_pairs = pairs_to_settle(far, 2.0)
    assert far_pairs is not None and far_pairs < (pairs_to_settle(near, 2.0) or 10**9)


@pytest.mark.parametrize(
    ("pairs", "verdicts", "elapsed", "expected"),
    [
        (2, ["worse", "worse"], 0.0, None),  # below the minimum (the experiment's repeats)
        (3, ["worse", "unchanged"], 0.0, "settled"),
        (3, ["worse", "inconclusive"], 0.0, None),
        (10, ["inconclusive"], 0.0, "max pairs"),
        (5, ["inconclusive"], 95.0, "budget"),  # the next 10 s pair would end past 100 s
        (3, [], 0.0, "settled"),  # no gated metric: nothing to wait for
    ],
)
def test_stop_reason(pairs: int, verdicts: list[Verdict], elapsed: float, expected: str | None) -> None:
    plan = PairPlan(min_pairs=3, max_pairs=10, budget_s=100.0)
    assert stop_reason(plan, pairs, verdicts, elapsed, 10.0) == expected


def test_ten_thousand_identical_sequences_cry_wolf_at_most_alpha_per_metric() -> None:
    """Identical arms on a noisy machine (log-normal windows, drift, one-sided transients),
    looked at after every pair: the false "worse" rate stays at or below alpha per metric,
    and most sequences settle as "unchanged"."""
    tally = simulate(0.0, 10_000, seed=20261206)
    for metric in ("tokens_per_second", "energy_per_output_token_j"):
        assert tally.rate(metric, "worse") <= ALPHA, metric
        assert tally.rate(metric, "better") <= ALPHA, metric
    assert tally.combined_rate("unchanged") > 0.5


@pytest.mark.parametrize("slowdown", [3.0, 5.0, 10.0, 20.0])
def test_real_slowdowns_are_worse_in_most_sequences(slowdown: float) -> None:
    tally = simulate(slowdown, 500, seed=int(slowdown))
    assert tally.combined_rate("worse") > 0.8
    assert tally.combined_rate("better") == 0.0


def test_the_simulation_is_seeded() -> None:
    assert simulate(0.0, 50, seed=7).pairs == simulate(0.0, 50, seed=7).pairs
    assert simulate(0.0, 50, seed=7, noise=Noise(window_sd=0.03)).pairs != simulate(0.0, 50, seed=7).pairs
