"""Is this energy figure publishable? The validity verdict, by the rules the field uses.

Warnings (schema/quality.py) say what is doubtful; a person publishing or gating on a number
needs a yes or no by named rules. Each check below states its rule and where the public
references use it (docs/metrics.md, "Validity"):

- window_length: the window lasts at least 10 x the meter's update period (NVML's energy
  counter: 100 ms, so 1 s; TokenPowerBench leaves GPU energy empty below 1 s, where the
  board's power reading is a 1 s average).
- devices_present: every GPU of the experiment is in every window's energy reads and, with
  the sampler on, in its samples (InferenceX: power_valid=0 when a GPU is missing).
- sampler_coverage: the samples cover the window with no gap over 3 sample periods
  (InferenceX: window coverage and sample gaps).
- power_within_limits: each GPU's average power is above 1 W and at most 110% of its power
  limit read from NVML (ML.ENERGY: power bounds from the board's TDP).
- temperature_range: every sampled temperature within 20-95 °C (ML.ENERGY).
- energy_per_token_range: 0 < J per output token <= 100 (ML.ENERGY).
- requests_complete: every window generated the requested output tokens.
- counter_matches_power: in every NVML window of at least 2 s whose energy is a counter delta,
  the counter agrees with the polled power integrated over the same window within 1%, plus
  1 s x the polled power's range (the power reading is a 1 s trailing average: it lags the
  counter by up to that much where power moves), plus one counter step at the peak power (the
  counter's own resolution: as probed at the meter's creation, else 100 ms). InferenceX cross-checks its energy accumulators against
  integrated power the same way; a counter that was reset or glitched inside the window while
  its delta still looks plausible fails it when it lost more than that.

A check that does not apply (no GPU, no samples, no temperature a board can report) is left
out, not passed. Pure: windows and facts in, a `Validity` out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pytest_llem.energy.base import EnergyReading, trapezoid_energy_j
from pytest_llem.energy.zeus_meter import ZEUS_WINDOW
from pytest_llem.engines.base import RequestOutput, ServedCall, server_running
from pytest_llem.hardware.sampler import Sample
from pytest_llem.schema.results import EnergyInfo, Validity, ValidityCheck


class MeasuredWindow(Protocol):
    """What a check reads of a window (measure.metrics.MeasuredWindow has it)."""

    reading: EnergyReading
    window_s: float
    requests: list[RequestOutput]
    samples: list[Sample]
    start_s: float | None
    end_s: float | None
    served_calls: list[ServedCall]


# the meters' update periods (seconds): how often the figure they read can change
UPDATE_PERIOD_S = {"nvml": 0.1, "zeus": 0.1, "rapl": 0.001, "codecarbon": 1.0, "estimate": 0.01}
WINDOW_PERIODS = 10
GAP_PERIODS = 3
POWER_FLOOR_W = 1.0
POWER_LIMIT_SLACK = 1.10
TEMPERATURE_RANGE_C = (20.0, 95.0)
MAX_J_PER_TOKEN = 100.0
# counter against integrated polled power: the power reading's averaging period (1 s on Ampere
# and later), the shortest window the comparison means something over (two of those periods),
# and the disagreement allowed on top of the lag (what a steady load shows: well under 1%)
POWER_AVERAGE_S = 1.0
AGREEMENT_MIN_WINDOW_S = 2 * POWER_AVERAGE_S
COUNTER_POWER_TOLERANCE = 0.01
# NVML's energy counter moves in steps of about 100 ms: the delta of two reads can be off by up
# to one step's energy (the edges' steps fall anywhere), which no comparison can see past
COUNTER_UPDATE_S = UPDATE_PERIOD_S["nvml"]
COUNTER_METHODS = ("counter delta", ZEUS_WINDOW)  # a GPU's energy read from NVML's counter


@dataclass(frozen=True)
class ValidityFacts:
    """What the lifecycle knows besides the windows."""

    gpu_indices: Sequence[int] = ()
    power_limits_w: Mapping[int, float | None] = field(default_factory=dict)
    sampler: bool = False
    sample_hz: float = 10.0
    min_window_s: float | None = None  # energy.min_valid_window_s; None: 10 x the update period
    requested_output_tokens: int = 0  # per window
    fixed_length: bool = True  # False: EOS may end a request early, by the user's choice
    served_concurrency: int | None = None  # a served engine's concurrency (its load's target)


def _check(name: str, value: float | str | None, bound: str, passed: bool, rule: str) -> ValidityCheck:
    return ValidityCheck(name=name, value=value, bound=bound, passed=passed, rule=rule)


def minimum_window_s(source: str, configured: float | None) -> float:
    """The shortest window the `source` meter measures validly: `energy.min_valid_window_s`
    when set, else 10 x the meter's update period (1 s for an unknown meter)."""
    if configured is not None:
        return configured
    period = UPDATE_PERIOD_S.get(source)
    return WINDOW_PERIODS * period if period is not None else 1.0


def _window_length(
    info: EnergyInfo, windows: Sequence[MeasuredWindow], facts: ValidityFacts
) -> ValidityCheck:
    minimum = minimum_window_s(info.source, facts.min_window_s)
    shortest = min(w.window_s for w in windows)
    return _check(
        "window_length",
        shortest,
        f">= {minimum:g} s",
        shortest >= minimum,
        f"the shortest window lasts at least {WINDOW_PERIODS} x the {info.source!r} meter's update period",
    )


def _devices_present(windows: Sequence[MeasuredWindow], facts: ValidityFacts) -> ValidityCheck:
    expected = {f"gpu{i}" for i in facts.gpu_indices}
    missing: set[str] = set()
    for window in windows:
        missing |= expected - set(window.reading.info.per_device_j)
        if facts.sampler:
            missing |= expected - {f"gpu{s.gpu_index}" for s in window.samples}
    return _check(
        "devices_present",
        ",".join(sorted(missing)) or "all",
        f"every one of {','.join(sorted(expected))}",
        not missing,
        "every GPU of the experiment is in every window's energy reads and samples",
    )


def _sampler_coverage(windows: Sequence[MeasuredWindow], facts: ValidityFacts) -> ValidityCheck:
    limit = GAP_PERIODS / facts.sample_hz
    worst = 0.0
    for window in windows:
        if window.start_s is None or window.end_s is None:
            continue
        for index in facts.gpu_indices:
            times = sorted(s.time_s for s in window.samples if s.gpu_index == index and s.power_w is not None)
            edges = [window.start_s, *times, window.end_s]
            worst = max(worst, *(b - a for a, b in itertools.pairwise(edges)))
    return _check(
        "sampler_coverage",
        worst,
        f"largest gap <= {limit:g} s ({GAP_PERIODS} sample periods)",
        worst <= limit,
        "power samples cover each window, edges included, with no gap over 3 sample periods",
    )


def _power_within_limits(windows: Sequence[MeasuredWindow], facts: ValidityFacts) -> ValidityCheck | None:
    worst: tuple[float, str] | None = None  # (how far out of bounds, description)
    checked = False
    for window in windows:
        if window.window_s <= 0:
            continue
        for index in facts.gpu_indices:
            energy = window.reading.info.per_device_j.get(f"gpu{index}")
            if energy is None:
                continue
            checked = True
            power = energy / window.window_s
            limit = facts.power_limits_w.get(index)
            ceiling = limit * POWER_LIMIT_SLACK if limit else None
            excess = max(POWER_FLOOR_W - power, power - ceiling if ceiling else 0.0)
            if worst is None or excess > worst[0]:
                worst = (excess, f"gpu{index} {power:.1f} W (limit {limit if limit else 'unknown'} W)")
    if not checked or worst is None:
        return None
    return _check(
        "power_within_limits",
        worst[1],
        f"> {POWER_FLOOR_W:g} W and <= {POWER_LIMIT_SLACK:.0%} of the board's power limit",
        worst[0] <= 0,
        "each GPU's average power is above a floor and within its NVML power limit",
    )


def _temperature_range(windows: Sequence[MeasuredWindow]) -> ValidityCheck | None:
    readings = [s.temperature_c for w in windows for s in w.samples if s.temperature_c is not None]
    if not readings:
        return None
    low, high = TEMPERATURE_RANGE_C
    outside = [t for t in readings if not low <= t <= high]
    value = (max(outside, key=lambda t: abs(t - (low + high) / 2))) if outside else max(readings)
    return _check(
        "temperature_range",
        value,
        f"{low:g}-{high:g} °C",
        not outside,
        "every sampled GPU temperature is within 20-95 °C",
    )


def _energy_per_token(windows: Sequence[MeasuredWindow]) -> ValidityCheck | None:
    energies = [w.reading.energy_j for w in windows]
    tokens = sum(r.output_tokens for w in windows for r in w.requests)
    if any(e is None for e in energies) or not tokens:
        return None
    value = sum(e for e in energies if e is not None) / tokens
    return _check(
        "energy_per_token_range",
        value,
        f"> 0 and <= {MAX_J_PER_TOKEN:g} J",
        0 < value <= MAX_J_PER_TOKEN,
        "0 < J per output token <= 100",
    )


def _requests_complete(windows: Sequence[MeasuredWindow], facts: ValidityFacts) -> ValidityCheck:
    produced = [sum(r.output_tokens for r in w.requests) for w in windows]
    short = min(produced)
    return _check(
        "requests_complete",
        short,
        f"== {facts.requested_output_tokens} output tokens in every window",
        all(p == facts.requested_output_tokens for p in produced),
        "every window generated the requested output tokens",
    )


# ML.ENERGY's validator: a served load whose server ran fewer than this share of the target
# concurrency on average (its steady state) did not measure the load it claims
BATCH_FULL_SHARE = 0.8


def _requests_succeeded(windows: Sequence[MeasuredWindow]) -> ValidityCheck:
    failed = sum(1 for w in windows for r in w.requests if r.error is not None)
    total = sum(len(w.requests) for w in windows)
    return _check(
        "requests_succeeded",
        failed,
        f"0 of {total} requests failed",
        failed == 0,
        "a served load's every request got its answer (a failed request did no work the energy divides by)",
    )


def _batch_full(windows: Sequence[MeasuredWindow], facts: ValidityFacts) -> ValidityCheck | None:
    target = facts.served_concurrency
    mean, _ = server_running([call for w in windows for call in w.served_calls])
    if target is None or mean is None:
        return None  # the server exposes no running-requests gauge: nothing to check against
    return _check(
        "batch_full",
        round(mean, 3),
        f">= {BATCH_FULL_SHARE:g} x concurrency {target} = {BATCH_FULL_SHARE * target:g} running requests",
        mean >= BATCH_FULL_SHARE * target,
        "the server's mean running requests (/metrics, over the steady state) reached 80% of the target "
        "concurrency (ML.ENERGY's validator rule)",
    )


def served_checks(windows: Sequence[MeasuredWindow], facts: ValidityFacts) -> list[ValidityCheck]:
    """A served load's own checks (engines/served): every request answered, the batch full."""
    if facts.served_concurrency is None:
        return []
    checks = [_requests_succeeded(windows), _batch_full(windows, facts)]
    return [check for check in checks if check is not None]


def _counter_matches_power(windows: Sequence[MeasuredWindow], facts: ValidityFacts) -> ValidityCheck | None:
    """Each GPU's counter delta against its polled power, integrated over the same window."""
    worst: tuple[float, str, float, float] | None = None  # (gap / bound, description, bound in J, step)
    for number, window in enumerate(windows, start=1):
        if window.start_s is None or window.end_s is None or window.window_s < AGREEMENT_MIN_WINDOW_S:
            continue
        info = window.reading.info
        methods = info.assumptions.get("per_device_method", {})
        steps = info.assumptions.get("counter_step_s", {})
        for index in facts.gpu_indices:
            label = f"gpu{index}"
            counter_j = info.per_device_j.get(label)
            if counter_j is None or methods.get(label, info.method) not in COUNTER_METHODS:
                continue
            points = [
                (s.time_s, s.power_w)
                for s in window.samples
                if s.gpu_index == index and s.power_w is not None
            ]
            if len(points) < 2:
                continue
            polled_j = trapezoid_energy_j(points, window.start_s, window.end_s)
            powers = [power for _, power in points]
            step_s = steps.get(label) or COUNTER_UPDATE_S  # as probed, else the common 100 ms
            bound_j = (
                COUNTER_POWER_TOLERANCE * abs(polled_j)
                + POWER_AVERAGE_S * (max(powers) - min(powers))
                + step_s * max(powers)
            )
            ratio = (
                abs(counter_j - polled_j) / bound_j
                if bound_j > 0
                else (0.0 if counter_j == polled_j else math.inf)
            )
            if worst is None or ratio > worst[0]:
                described = (
                    f"{label} window {number}: counter {counter_j:.1f} J, polled power {polled_j:.1f} J "
                    f"({(counter_j - polled_j) / polled_j:+.2%})"
                    if polled_j
                    else f"{label} window {number}: counter {counter_j:.1f} J, polled power 0 J"
                )
                worst = (ratio, described, bound_j, step_s)
    if worst is None:
        return None
    return _check(
        "counter_matches_power",
        worst[1],
        f"within {COUNTER_POWER_TOLERANCE:.0%} + {POWER_AVERAGE_S:g} s x the polled power's range + "
        f"{worst[3]:.2g} s (the counter's step) x its peak ({worst[2]:.1f} J)",
        worst[0] <= 1.0,
        "the energy counter agrees with the polled power integrated over the window (windows >= 2 s)",
    )


def validity(info: EnergyInfo, windows: Sequence[MeasuredWindow], facts: ValidityFacts) -> Validity | None:
    """The verdict; None when nothing was metered (the `none` meter) and no served request
    failed its check."""
    if not windows:
        return None
    served = served_checks(windows, facts)
    if info.source == "none":
        failing = [check for check in served if not check.passed]
        return Validity(status="invalid", checks=served) if failing else None
    checks: list[ValidityCheck | None] = [_window_length(info, windows, facts)]
    if facts.gpu_indices:
        checks.append(_devices_present(windows, facts))
        if facts.sampler:
            checks.append(_sampler_coverage(windows, facts))
        checks.append(_power_within_limits(windows, facts))
        checks.append(_temperature_range(windows))
        if facts.sampler:
            checks.append(_counter_matches_power(windows, facts))
    checks.append(_energy_per_token(windows))
    if facts.fixed_length:
        checks.append(_requests_complete(windows, facts))
    checks.extend(served)
    kept = [c for c in checks if c is not None]
    passed = all(c.passed for c in kept)
    served_failed = any(not check.passed for check in served)  # invalid, estimated or not
    status = (
        "invalid" if served_failed else "estimated" if not info.measured else "valid" if passed else "invalid"
    )
    return Validity(status=status, checks=kept)
