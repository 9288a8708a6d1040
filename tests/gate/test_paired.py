"""Paired statistics and verdicts with hand-built numbers (pytest_llem.gate.paired)."""

import math

import pytest

from pytest_llem.gate.paired import (
    combine,
    headline,
    hodges_lehmann,
    pair_ratios,
    paired_stats,
    repeats_to_settle,
    verdict,
)


def test_ratios_pair_adjacent_windows_and_drop_unusable_ones():
    assert pair_ratios([2.0, 4.0, None, 5.0, 1.0], [3.0, 4.0, 1.0, 0.0]) == [1.5, 1.0]


def test_hodges_lehmann_is_the_median_of_walsh_averages_with_the_exact_interval():
    logs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    estimate, low, high, confidence = hodges_lehmann(logs)
    assert estimate == pytest.approx(0.35)
    # n = 6: P(W+ <= 0) = 1/64 is the only tail under 2.5%, so the interval is min..max
    assert (low, high) == (pytest.approx(0.1), pytest.approx(0.6))
    assert confidence == pytest.approx(1 - 2 / 64)


def test_hodges_lehmann_interval_narrows_with_more_pairs():
    logs = [i / 100 for i in range(1, 13)]  # n = 12: P(W+ <= 13) = 0.0212 is the tail used
    _, low, high, confidence = hodges_lehmann(logs)
    assert confidence == pytest.approx(0.9575, abs=1e-3)
    assert 0.01 < low < high < 0.12


def test_a_steady_slowdown_across_pairs_is_significant_with_its_interval():
    ratios = [1.10, 1.12, 1.09, 1.11, 1.13, 1.10, 1.12, 1.08]
    stats = paired_stats(ratios)
    assert stats.test == "wilcoxon signed-rank"
    assert stats.p_value == pytest.approx(2 / 2**8)  # every sign positive
    assert 1.09 < stats.ratio < 1.12
    assert stats.ratio_low is not None and stats.ratio_low >= 1.08
    assert verdict(stats.ratio_low, stats.ratio_high, stats.p_value, 5.0, True) == "worse"
    assert verdict(stats.ratio_low, stats.ratio_high, stats.p_value, 5.0, False) == "better"


def test_few_pairs_use_a_paired_t_test_on_log_ratios():
    stats = paired_stats([1.2, 1.25, 1.22])
    assert stats.test == "paired t (log ratios)"
    logs = [math.log(r) for r in (1.2, 1.25, 1.22)]
    assert stats.ratio == pytest.approx(math.exp(sum(logs) / 3))
    assert stats.p_value is not None and stats.p_value < 0.05


def test_identical_windows_give_an_exact_unchanged():
    stats = paired_stats([1.0] * 6)
    assert (stats.ratio_low, stats.ratio_high, stats.p_value) == (1.0, 1.0, 1.0)
    assert verdict(stats.ratio_low, stats.ratio_high, stats.p_value, 5.0, True) == "unchanged"


def test_too_few_pairs_give_no_interval_and_an_inconclusive_verdict():
    stats = paired_stats([1.3])
    assert stats.ratio_low is None and stats.p_value is None
    assert verdict(None, None, None, 5.0, True) == "inconclusive"


@pytest.mark.parametrize(
    ("low", "high", "p", "expected"),
    [
        (1.06, 1.20, 0.01, "worse"),  # significant, whole interval beyond +5%
        (1.03, 1.52, 0.0498, "inconclusive"),  # significant but straddles the threshold
        (1.04, 1.14, 0.003, "inconclusive"),  # the "+10.2%, called unchanged" case
        (0.97, 1.04, 0.5, "unchanged"),  # whole interval inside +-5%
        (0.90, 1.30, 0.6, "inconclusive"),  # too wide to say anything
        (0.80, 0.93, 0.01, "better"),
        (1.10, 1.30, 0.08, "inconclusive"),  # beyond the threshold but not significant
    ],
)
def test_verdict_rules(low, high, p, expected):
    assert verdict(low, high, p, 5.0, lower_is_better=True) == expected


def test_ungated_metrics_are_information_only():
    assert verdict(1.5, 1.9, 0.001, None, True) == "info"


def test_repeats_to_settle_scale_with_the_square_of_the_interval():
    # estimate +10%, interval 1.03-1.17 at n=6: half-width twice the distance to +5% -> ~4x
    needed = repeats_to_settle(6, 1.10, 1.10 / 1.065, 1.10 * 1.065, 5.0)
    half, distance = math.log(1.065), math.log(1.10) - math.log(1.05)
    assert needed == math.ceil(6 * (half / distance) ** 2)
    assert repeats_to_settle(6, 1.05, 1.0, 1.1, 5.0) is None  # on the boundary: hopeless
    assert repeats_to_settle(6, 1.0, None, None, 5.0) is None


def test_experiment_verdict_and_headline():
    assert combine(["unchanged", "better"]) == "better"
    assert combine(["better", "inconclusive"]) == "inconclusive"
    assert combine(["inconclusive", "worse"]) == "worse"
    assert combine([]) == "unchanged"
    assert headline(["worse", "unchanged", "worse", "inconclusive"] + ["unchanged"] * 8) == (
        "2 worse, 1 inconclusive, 9 unchanged"
    )
