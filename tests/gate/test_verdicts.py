"""Paired statistics and verdicts with hand-built numbers (pytest_llem.gate.verdicts)."""

import math

import pytest

from pytest_llem.gate.verdicts import (
    combine,
    headline,
    pair_ratios,
    repeats_to_settle,
    verdict,
)


def test_ratios_pair_adjacent_windows_and_drop_unusable_ones() -> None:
    assert pair_ratios([2.0, 4.0, None, 5.0, 1.0], [3.0, 4.0, 1.0, 0.0]) == [1.5, 1.0]


def test_no_interval_gives_an_inconclusive_verdict() -> None:
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
def test_verdict_rules(low: float, high: float, p: float, expected: str) -> None:
    assert verdict(low, high, p, 5.0, lower_is_better=True) == expected


def test_ungated_metrics_are_information_only() -> None:
    assert verdict(1.5, 1.9, 0.001, None, True) == "info"


def test_repeats_to_settle_scale_with_the_square_of_the_interval() -> None:
    # estimate +10%, interval 1.03-1.17 at n=6: half-width twice the distance to +5% -> ~4x
    needed = repeats_to_settle(6, 1.10, 1.10 / 1.065, 1.10 * 1.065, 5.0)
    half, distance = math.log(1.065), math.log(1.10) - math.log(1.05)
    assert needed == math.ceil(6 * (half / distance) ** 2)
    assert repeats_to_settle(6, 1.05, 1.0, 1.1, 5.0) is None  # on the boundary: hopeless
    assert repeats_to_settle(6, 1.0, None, None, 5.0) is None


def test_experiment_verdict_and_headline() -> None:
    assert combine(["unchanged", "better"]) == "better"
    assert combine(["better", "inconclusive"]) == "inconclusive"
    assert combine(["inconclusive", "worse"]) == "worse"
    assert combine([]) == "unchanged"
    assert headline(["worse", "unchanged", "worse", "inconclusive"] + ["unchanged"] * 8) == (
        "2 worse, 1 inconclusive, 9 unchanged"
    )
