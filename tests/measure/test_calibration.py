"""The window calibration's rules on their own (measure/calibration.py); the lifecycle's use of
them, with a simulated cold start, is in test_lifecycle.py."""

from __future__ import annotations

import pytest

from pytest_llem.measure.calibration import Calibration, from_timed_passes, from_warmup
from pytest_llem.schema.limits import MAX_PASSES
from pytest_llem.schema.results import WarmupResult


def _warmup(*steps: float) -> WarmupResult:
    return WarmupResult(
        mode="fixed",
        iterations=len(steps),
        converged=True,
        final_cv=None,
        target_cv=None,
        max_prompts=None,
        latencies_s=list(steps),
        thermal_floor_s=0.0,
        thermal_floor_waited_s=0.0,
    )


def test_a_cold_step_alone_decides_provisionally_and_only_where_a_window_can_check_it() -> None:
    solo = from_warmup(_warmup(4.0), units_per_pass=1, minimum=1.0, cold_allowed=True)
    assert solo == Calibration(1, "warmup: the first (cold) step 4 s x 1 per pass", 1.0, provisional=True)
    # an A/B side cannot take a window again: a cold step alone decides nothing there
    assert from_warmup(_warmup(4.0), units_per_pass=1, minimum=1.0, cold_allowed=False) is None
    # warm steps decide for both, for good: the median of the warm ones, the cold one left out
    warm = from_warmup(_warmup(9.0, 2.0, 3.0, 2.5), units_per_pass=1, minimum=1.0, cold_allowed=False)
    assert warm is not None and warm.passes == 1 and not warm.provisional
    assert warm.basis == "warmup: median of 3 warm step(s) 2.5 s x 1 per pass"
    # under the 2x margin: passes are timed apart
    assert from_warmup(_warmup(9.0, 0.4), units_per_pass=4, minimum=1.0, cold_allowed=True) is None
    assert from_warmup(None, units_per_pass=4, minimum=1.0, cold_allowed=True) is None


@pytest.mark.parametrize(
    ("window_s", "expected"),
    [
        (1.5, None),  # the window reached the minimum: kept
        (0.25, 4),  # 1 pass in 0.25 s: 4 make a second
        (0.0, MAX_PASSES),  # a clock that did not move: as many as allowed
    ],
)
def test_the_first_window_checks_a_provisional_count(window_s: float, expected: int | None) -> None:
    provisional = Calibration(1, "warmup: the first (cold) step", 1.0, provisional=True)
    checked = provisional.checked_by_window(window_s)
    assert (checked.passes if checked else None) == expected
    if checked is not None:
        assert not checked.provisional and "taken again" in checked.basis
        assert checked.checked_by_window(0.0) is None  # checked once
    assert Calibration(1, "timed", 1.0).checked_by_window(0.1) is None  # a timed count stands


def test_timed_passes_grow_tenfold_until_a_tenth_of_the_window_then_scale() -> None:
    seen: list[int] = []

    def run(count: int) -> float:
        seen.append(count)
        return count * 0.003

    calibration = from_timed_passes(run, 1.0)
    assert seen == [1, 10, 100] and calibration.passes == 334  # ceil(1 s x 100 / 0.3 s)
    assert from_timed_passes(lambda count: 0.0, 1.0).passes == 1
