"""Metrics as a pure function: hand-built windows in, exact figures out (no engine, no clock)."""

import pytest
from factories import simulated_settings

from pytest_llem.energy.base import EnergyReading
from pytest_llem.engines import ParameterCount, RequestOutput
from pytest_llem.measure.metrics import (
    MeasuredWindow,
    MetricsContext,
    percentiles,
    request_latency,
)
from pytest_llem.measure.result import experiment_result
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.results import EnergyInfo

CONFIG = ExperimentConfig(n_prompts=2, max_new_tokens=4, repeats=2)


def _reading(energy_j: float) -> EnergyReading:
    return EnergyReading(energy_j, EnergyInfo(source="rapl", measured=True, method="counter delta"))


def _request(
    first: float, gap: float, n: int = 4, input_tokens: int = 10, batch_level: bool = False
) -> RequestOutput:
    """A request whose tokens arrive at first, first + gap, ... (seconds since submission)."""
    times = tuple(first + gap * k for k in range(n))
    return RequestOutput(n, input_tokens, times[0], times, times[-1], batch_level)


def _window(
    energy_j: float,
    window_s: float,
    requests: list[RequestOutput],
    reference: MeasuredWindow | None = None,
) -> MeasuredWindow:
    return MeasuredWindow(_reading(energy_j), window_s, requests, [], reference)


def test_throughput_and_energy_per_token_are_window_totals_over_tokens() -> None:
    windows = [
        _window(8.0, 2.0, [_request(0.1, 0.1), _request(0.2, 0.1)]),
        _window(12.0, 2.0, [_request(0.1, 0.1), _request(0.2, 0.1)]),
    ]
    result = experiment_result(CONFIG, windows, MetricsContext(baseline_power_w=1.5))
    assert result.status == "passed"
    assert result.output_tokens == 8 and result.requested_output_tokens == 8
    assert result.input_tokens == 20
    assert result.tokens_per_second == pytest.approx(16 / 4.0)
    assert result.energy_j == pytest.approx(10.0)
    assert result.energy_per_output_token_j == pytest.approx(20.0 / 16)
    # adjusted = gross - baseline power x window, per repeat, never clamped
    assert [r.energy_adjusted_j for r in result.repeats] == pytest.approx([5.0, 9.0])
    assert result.energy_adjusted_per_output_token_j == pytest.approx(14.0 / 16)
    assert result.baseline_power_w == 1.5
    assert result.stats["energy_j"].n == 2
    assert "output_tokens_mismatch" not in result.warning_flags


def test_per_request_latency_percentiles() -> None:
    # TTFTs 0.1 .. 1.0 s; every request then emits a token every 0.05 s
    requests = [_request(0.1 * k, 0.05) for k in range(1, 11)]
    latency = request_latency(requests)
    assert latency is not None and latency.scope == "request"
    assert latency.ttft_s is not None and latency.tpot_s is not None and latency.itl_s is not None
    assert latency.ttft_s.n == 10
    assert latency.ttft_s.p50 == pytest.approx(0.55)  # linear interpolation between 0.5 and 0.6
    assert latency.ttft_s.p90 == pytest.approx(0.91)
    assert latency.ttft_s.p99 == pytest.approx(0.991)
    assert latency.tpot_s.p50 == pytest.approx(0.05)  # (e2e - ttft) / (n - 1)
    assert latency.itl_s.n == 30 and latency.itl_s.p99 == pytest.approx(0.05)


def test_tpot_and_itl_differ_when_tokens_arrive_unevenly() -> None:
    # tokens at 1.0, 1.1, 1.2, 2.0: TPOT averages the gaps, ITL keeps the stall
    out = RequestOutput(4, 5, 1.0, (1.0, 1.1, 1.2, 2.0), 2.0)
    latency = request_latency([out])
    assert latency is not None and latency.tpot_s is not None and latency.itl_s is not None
    assert latency.tpot_s.p50 == pytest.approx(1.0 / 3)
    assert latency.itl_s.n == 3
    assert latency.itl_s.p50 == pytest.approx(0.1)
    assert max(out.inter_token_latencies_s) == pytest.approx(0.8)


def test_batch_level_times_are_labelled_as_such() -> None:
    latency = request_latency([_request(0.2, 0.1, batch_level=True), _request(0.2, 0.1, batch_level=True)])
    assert latency is not None
    assert latency.scope == "batch"


def test_a_request_without_timings_has_no_latency() -> None:
    window = _window(3.0, 1.0, [RequestOutput(8, 0)])
    result = experiment_result(
        CONFIG.model_copy(update={"repeats": 1, "n_prompts": 1, "max_new_tokens": 8}),
        [window],
        MetricsContext(),
    )
    assert result.latency is None
    assert result.prefill_s is None and result.time_per_output_token_s is None
    assert result.tokens_per_second == 8.0


def test_repeat_prefill_and_tpot_are_request_means() -> None:
    window = _window(1.0, 1.0, [_request(0.1, 0.1), _request(0.3, 0.2)])
    repeat = experiment_result(CONFIG.model_copy(update={"repeats": 1}), [window], MetricsContext()).repeats[
        0
    ]
    assert repeat.prefill_s == pytest.approx(0.2)
    assert repeat.time_per_output_token_s == pytest.approx(0.15)


def test_fewer_tokens_than_requested_is_flagged() -> None:
    windows = [_window(1.0, 1.0, [_request(0.1, 0.1, n=4), _request(0.1, 0.1, n=2)])] * 2
    result = experiment_result(CONFIG, windows, MetricsContext())
    assert result.output_tokens == 6
    assert "output_tokens_mismatch" in result.warning_flags


def test_negative_adjusted_energy_is_reported_not_clamped() -> None:
    windows = [_window(1.0, 2.0, [_request(0.1, 0.1), _request(0.1, 0.1)])] * 2
    result = experiment_result(CONFIG, windows, MetricsContext(baseline_power_w=1.0))
    assert result.energy_adjusted_j == pytest.approx(-1.0)
    assert "negative_adjusted_energy" in result.warning_flags


def test_palm_flops_from_the_engines_parameter_count() -> None:
    windows = [_window(1.0, 1.0, [_request(0.1, 0.1, n=4, input_tokens=10)] * 2)] * 2
    count = ParameterCount(1000, source="config", confidence="medium", notes="from shapes")
    result = experiment_result(CONFIG, windows, MetricsContext(parameters=count))
    assert result.flops is not None
    # forward tokens of one repeat: prompts (2 x 10) + all generated tokens but the last (2 x 3)
    assert result.flops.tokens_processed == 26
    assert result.flops.flops == 2 * 1000 * 26
    assert result.flops.parameter_source == "config"
    assert result.flops.flops_per_output_token == pytest.approx(2 * 1000 * 26 / 8)


def test_reference_window_gives_relative_time_and_energy() -> None:
    reference = _window(4.0, 2.0, [_request(0.1, 0.1)] * 2)
    window = _window(6.0, 1.0, [_request(0.1, 0.1)] * 2, reference=reference)
    repeat = experiment_result(CONFIG.model_copy(update={"repeats": 1}), [window], MetricsContext()).repeats[
        0
    ]
    assert repeat.relative_time == pytest.approx(0.5)
    assert repeat.relative_energy == pytest.approx(1.5)


def test_engine_identity_is_recorded() -> None:
    context = MetricsContext(engine_version="0.3.16", engine_settings={"n_threads": 2})
    window = _window(1.0, 1.0, [_request(0.1, 0.1)] * 2)
    result = experiment_result(
        CONFIG.model_copy(update={"engine": "llama_cpp", "repeats": 1}), [window], context
    )
    assert (result.engine, result.engine_version) == ("llama_cpp", "0.3.16")
    assert result.engine_settings == {"n_threads": 2}


def test_percentiles_of_one_value_and_of_nothing() -> None:
    assert percentiles([]) is None
    single = percentiles([0.25])
    assert single is not None
    assert (single.p50, single.p90, single.p99, single.mean) == (0.25, 0.25, 0.25, 0.25)


def test_the_lifecycle_hands_the_engines_request_times_through_unchanged() -> None:
    """End to end on the simulated engine, whose token times are scripted exactly."""
    from pytest_llem import ExperimentSession, build_config
    from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, simulated_gpus

    settings = simulated_settings(
        n_prompts=3,
        max_new_tokens=5,
        warmup={"n_warmup": 0, "thermal_floor_s": 0},
        min_window_s=0,  # one pass per window: the counts below are of one pass
    )
    workload = SimulatedWorkload(seconds_per_token=0.01, prefill_seconds_per_token=0.001)
    with simulated_gpus([SimulatedGpu()], workload):
        result = ExperimentSession().run(build_config(("test", settings)), "t::latency")
    assert result.status == "passed", result.error
    latency = result.latency
    assert latency is not None
    assert latency.ttft_s is not None and latency.tpot_s is not None and latency.itl_s is not None
    assert latency.scope == "batch"
    assert (latency.ttft_s.n, latency.tpot_s.n, latency.itl_s.n) == (6, 6, 6 * 4)
    assert latency.tpot_s.p50 == pytest.approx(0.01) and latency.itl_s.p99 == pytest.approx(0.01)
    # each request's first token = its prefill (0.001 s per prompt token) + one token step
    assert latency.ttft_s.mean == pytest.approx(0.001 * result.repeats[0].input_tokens / 3 + 0.01)


def test_a_flag_raised_for_several_metrics_is_one_warning_with_both_messages() -> None:
    from pytest_llem.measure.metrics import dedupe
    from pytest_llem.schema.results import MeasurementWarning

    def warning(message: str) -> MeasurementWarning:
        return MeasurementWarning(flag="high_cv", message=message, value=0.2, threshold=0.1, remedy="r")

    merged = dedupe([warning("tokens/s CV 20%"), warning("J/token CV 30%"), warning("tokens/s CV 20%")])
    assert [(w.flag, w.message) for w in merged] == [("high_cv", "tokens/s CV 20%; J/token CV 30%")]


def test_the_leaderboard_metrics_divide_the_same_window_totals() -> None:
    windows = [
        _window(8.0, 2.0, [_request(0.1, 0.1), _request(0.2, 0.1)]),
        _window(12.0, 2.0, [_request(0.1, 0.1), _request(0.2, 0.1)]),
    ]
    result = experiment_result(CONFIG, windows, MetricsContext())
    # 20 J over 4 s, 16 output tokens, 40 input tokens (10 a request), 4 requests
    assert result.energy_per_input_token_j == pytest.approx(20.0 / 40)
    assert result.energy_per_total_token_j == pytest.approx(20.0 / 56)
    assert result.energy_per_request_j == pytest.approx(20.0 / 4)
    assert result.average_power_w == pytest.approx(20.0 / 4.0)
    assert result.output_tokens_per_joule == pytest.approx(16 / 20.0)


def test_without_energy_or_input_tokens_the_leaderboard_metrics_are_null_never_zero() -> None:
    no_energy = [
        MeasuredWindow(
            EnergyReading(None, EnergyInfo(source="none", measured=False, method="none")),
            1.0,
            [_request(0.1, 0.1)],
            [],
        )
    ]
    result = experiment_result(CONFIG, no_energy, MetricsContext())
    assert result.energy_per_request_j is None and result.average_power_w is None
    assert result.output_tokens_per_joule is None and result.energy_per_input_token_j is None
    no_prompt = [_window(8.0, 2.0, [_request(0.1, 0.1, input_tokens=0)])]
    assert experiment_result(CONFIG, no_prompt, MetricsContext()).energy_per_input_token_j is None
