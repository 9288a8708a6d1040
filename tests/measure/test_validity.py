"""The validity verdict: every rule driven both ways on constructed windows, and end to end on
a simulated GPU (an invalid experiment stores no energy figure, and the gate says why)."""

import pytest
from factories import simulated_clock, simulated_settings

from pytest_llem import ExperimentSession, build_config
from pytest_llem.energy import DeviceSet
from pytest_llem.energy import nvml as nvml_meter
from pytest_llem.energy.base import EnergyReading
from pytest_llem.engines.base import RequestOutput
from pytest_llem.gate.compare import compare_experiment
from pytest_llem.hardware.sampler import Sample
from pytest_llem.measure.metrics import MeasuredWindow
from pytest_llem.measure.validity import ValidityFacts, validity
from pytest_llem.render.comment import render_comment
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.results import EnergyInfo, EnergySource, ExperimentResult, Validity
from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, simulated_gpus

FACTS = ValidityFacts(
    gpu_indices=(0,), power_limits_w={0: 400.0}, sampler=True, sample_hz=10.0, requested_output_tokens=100
)


def _window(
    window_s: float = 2.0,
    energy_j: float = 400.0,
    tokens: int = 100,
    devices: tuple[str, ...] = ("gpu0",),
    gap: tuple[float, float] | None = None,
    temperature: float = 55.0,
    source: EnergySource = "nvml",
    polled_w: float | None = None,
) -> MeasuredWindow:
    measured = source != "estimate"
    info = EnergyInfo(
        source=source,
        measured=measured,
        method="counter delta",
        per_device_j={device: energy_j / len(devices) for device in devices},
    )
    samples = [
        Sample(k / 10, 0, polled_w or energy_j / window_s, temperature, None, None, None, None)
        for k in range(int(window_s * 10) + 1)
        if gap is None or not gap[0] < k / 10 < gap[1]
    ]
    return MeasuredWindow(
        EnergyReading(energy_j, info), window_s, [RequestOutput(tokens, 5)], samples, None, 0.0, window_s
    )


def _checks(window: MeasuredWindow, facts: ValidityFacts = FACTS) -> tuple[Validity, dict[str, bool]]:
    found = validity(window.reading.info, [window], facts)
    assert found is not None
    return found, {check.name: check.passed for check in found.checks}


def test_a_clean_window_passes_every_rule_and_is_valid() -> None:
    found, checks = _checks(_window())
    assert found.status == "valid"
    assert checks == dict.fromkeys(
        [
            "window_length",
            "devices_present",
            "sampler_coverage",
            "power_within_limits",
            "temperature_range",
            "energy_per_token_range",
            "requests_complete",
            "counter_matches_power",
        ],
        True,
    )


@pytest.mark.parametrize(
    ("window", "facts", "rule"),
    [
        (_window(window_s=0.5), FACTS, "window_length"),  # under 10 x NVML's 100 ms
        (_window(), ValidityFacts(**{**FACTS.__dict__, "gpu_indices": (0, 1)}), "devices_present"),
        (_window(gap=(0.4, 1.6)), FACTS, "sampler_coverage"),  # 1.2 s without a sample
        (_window(energy_j=1000.0), FACTS, "power_within_limits"),  # 500 W on a 400 W board
        (_window(energy_j=1.0), FACTS, "power_within_limits"),  # 0.5 W: under the floor
        (_window(temperature=97.0), FACTS, "temperature_range"),
        (
            _window(tokens=2),
            ValidityFacts(**{**FACTS.__dict__, "requested_output_tokens": 2}),
            "energy_per_token_range",
        ),
        (_window(tokens=90), FACTS, "requests_complete"),
        (_window(energy_j=400.0, polled_w=230.0), FACTS, "counter_matches_power"),  # counter 13% low
    ],
)
def test_each_rule_fails_its_own_case(window: MeasuredWindow, facts: ValidityFacts, rule: str) -> None:
    found, checks = _checks(window, facts)
    assert found.status == "invalid"
    assert checks[rule] is False
    failed = next(c for c in found.checks if c.name == rule)
    assert failed.value is not None and failed.bound and failed.rule


def test_the_window_minimum_is_settable_and_an_estimate_is_never_valid() -> None:
    _, checks = _checks(_window(window_s=0.5), ValidityFacts(**{**FACTS.__dict__, "min_window_s": 0.25}))
    assert checks["window_length"] is True
    estimated, _ = _checks(_window(source="estimate"))
    assert estimated.status == "estimated"
    none = _window()
    none.reading.info.source = "none"
    assert validity(none.reading.info, [none], FACTS) is None


def _run(max_new_tokens: int) -> ExperimentResult:
    workload = SimulatedWorkload(seconds_per_token=0.0125, prefill_seconds_per_token=0.0)
    with simulated_gpus([SimulatedGpu(power_w=220.0)], workload):
        config = build_config(("test", simulated_settings(min_window_s=0, max_new_tokens=max_new_tokens)))
        return ExperimentSession().run(config, "t::v")


def test_an_invalid_experiment_stores_no_energy_figure_and_the_gate_says_why() -> None:
    valid, invalid = _run(100), _run(4)  # windows of 2.5 s and 0.1 s
    assert valid.validity is not None and invalid.validity is not None
    assert valid.validity.status == "valid" and valid.energy_per_output_token_j is not None
    assert invalid.status == "passed" and invalid.validity.status == "invalid"
    assert [c.name for c in invalid.validity.failed] == ["window_length"]
    assert invalid.energy_j is None and invalid.energy_per_output_token_j is None
    assert invalid.average_power_w is None and all(r.energy_j is None for r in invalid.repeats)
    kept = next(c for c in invalid.validity.checks if c.name == "energy_per_token_range")
    assert isinstance(kept.value, float) and kept.value > 0  # the measured value stays, for inspection
    twin = invalid.model_copy(update={"config_hash": valid.config_hash})
    comparison = compare_experiment(valid, twin)
    assert comparison.reason == "energy not gated: invalid on head (window_length)"
    assert all(not m.metric.startswith("energy") for m in comparison.metrics)
    # the PR comment has a validity column: the reviewer sees why energy has no verdict
    assert comparison.validity == "invalid: head (window_length)"
    assert compare_experiment(valid, valid).validity == "valid"
    comment = render_comment([comparison, compare_experiment(valid, valid)])
    header, _, first, second = comment.splitlines()[-4:]
    assert "| validity |" in header
    assert "| invalid: head (window_length) |" in first and "| valid |" in second


CONFTEST = """
from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, simulated_gpus

def pytest_configure(config):
    workload = SimulatedWorkload(seconds_per_token=0.0125, prefill_seconds_per_token=0.0)
    simulation = simulated_gpus([SimulatedGpu(power_w=220.0)], workload)
    simulation.__enter__()
    config.add_cleanup(lambda: simulation.__exit__(None, None, None))
"""

BENCH = """
import pytest

SETTINGS = dict(engine="simulated", model="sim", device="cuda:0", n_prompts=2, repeats=1, min_window_s=0,
                warmup={"n_warmup": 1, "thermal_floor_s": 0}, energy={"meter": "nvml", "baseline_s": 0})

@pytest.mark.llem(**SETTINGS, max_new_tokens=100)
def test_long(llem):
    llem.run()

@pytest.mark.llem(**SETTINGS, max_new_tokens=4)
def test_short(llem):
    llem.run()
"""


def test_require_valid_fails_the_invalid_experiment_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(conftest=CONFTEST, test_bench=BENCH)
    result = pytester.runpytest("-p", "no:cacheprovider", "--llem-require-valid", "--junitxml=j.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*llem invalid (--llem-require-valid): window_length 0.1* (bound >= 1 s)*"])
    assert "Traceback" not in result.stdout.str()
    junit = (pytester.path / "j.xml").read_text()
    assert (
        'name="llem_validity" value="valid"' in junit
        and 'name="llem_validity_failed" value="window_length"' in junit
    )


@pytest.mark.parametrize(
    ("period_s", "reloads_s", "lost_j", "valid", "step"),
    [
        (0.1, None, 0.0, True, "0.1"),
        # a driver reload just before the window and another early in it (a reload shortly
        # after the previous one): the counter starts the window near 0 and restarts at 0, its
        # end value stays above its start, and with the sampler at 1 Hz no read in between saw
        # it fall, so the delta looks plausible and reads low; the polled power, integrated over
        # the same 3 s at 250 W, catches a loss beyond 1% + one counter step. (On the 100 ms
        # counter the reads are 20 ms stale at both ends: the loss includes the end's 5 J.)
        (0.1, (-0.03, 0.25), 70.0, False, "0.1"),
        # 20 J (2.7%) lost is within one 100 ms step at 250 W (25 J): a counter that moves every
        # 100 ms cannot be told from one that lost that much, so the check stays silent
        (0.1, (-0.03, 0.05), 20.0, True, "0.1"),
        # 12.75 J (1.7%, the case) on a board whose counter moves at every read: its
        # probed step (1 ms) allows 0.25 J, so the loss shows
        (0.0, None, 0.0, True, "0.001"),
        (0.0, (-0.001, 0.05), 12.75, False, "0.001"),
    ],
)
def test_the_counter_is_checked_against_integrated_polled_power_an_early_reset_included(
    period_s: float, reloads_s: tuple[float, float] | None, lost_j: float, valid: bool, step: str
) -> None:
    gpu = SimulatedGpu(power_w=250.0, counter_offset_mj=0, counter_period_s=period_s, power_average_s=1.0)
    with simulated_gpus([gpu]) as sim:
        clock = simulated_clock(sim.clock)
        clock.advance(0.02)
        meter = nvml_meter.create(EnergyConfig(sample_hz=1), DeviceSet((0,)))  # probes the step
        clock.advance(0.1 - clock.now() % 0.1 + 0.02)  # 20 ms past a counter update
        start_s = clock.now()
        if reloads_s is not None:
            gpu.counter_resets_at_s = tuple(start_s + offset for offset in reloads_s)
        meter.start()
        clock.advance(3.0)
        reading = meter.stop()
        end_s = clock.now()
        samples = list(meter.poller.samples)
        truth_j = sim.nvml.true_energy_j(0, start_s, end_s)
    assert reading.info.method == "counter delta" and not reading.warnings  # the meter saw nothing
    # probed at the meter's creation: a counter that moved at every read has its read interval
    # as its step; one that did not move has none known, and the check allows 100 ms
    probed = reading.info.assumptions["counter_step_s"]["gpu0"]
    assert probed == (None if period_s else pytest.approx(float(step)))
    assert truth_j == pytest.approx(750.0) and reading.energy_j == pytest.approx(truth_j - lost_j, abs=0.01)
    window = MeasuredWindow(reading, end_s - start_s, [RequestOutput(100, 5)], samples, None, start_s, end_s)
    found = validity(reading.info, [window], ValidityFacts(**{**FACTS.__dict__, "sample_hz": 1.0}))
    assert found is not None
    check = next(c for c in found.checks if c.name == "counter_matches_power")
    assert check.passed is valid and found.status == ("valid" if valid else "invalid")
    bound_j = 7.5 + float(step) * 250
    assert (
        check.bound
        == f"within 1% + 1 s x the polled power's range + {step} s (the counter's step) x its peak ({bound_j:.1f} J)"
    )
    if not valid:
        assert (
            check.value
            == f"gpu0 window 1: counter {750 - lost_j:.1f} J, polled power 750.0 J ({-lost_j / 750:+.2%})"
        )


def test_a_window_shorter_than_two_power_averages_is_not_compared() -> None:
    found, checks = _checks(_window(window_s=1.5, energy_j=300.0, polled_w=150.0))
    assert "counter_matches_power" not in checks and found.status == "valid"
