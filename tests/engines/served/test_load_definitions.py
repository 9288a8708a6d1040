"""The served engine's definitions, checked on their own: the arrival process (vLLM's and
AIPerf's gamma gaps), ML.ENERGY's steady state on the client's clock, goodput under SLOs, and
the settings that belong to a served model only."""

from __future__ import annotations

import itertools
import statistics

import pytest

from pytest_llem import build_config
from pytest_llem.energy.base import EnergyReading
from pytest_llem.engines.base import RequestOutput, ServedCall
from pytest_llem.engines.served.arrivals import arrival_offsets
from pytest_llem.engines.served.stream import LoadRun, StreamedRequest, steady_span
from pytest_llem.engines.transformers_backend import TransformersBackend
from pytest_llem.measure.metrics import MeasuredWindow
from pytest_llem.measure.preflight import served_only_problems
from pytest_llem.measure.served import is_good, served_load, served_warnings
from pytest_llem.schema.config import SloConfig
from pytest_llem.schema.results import EnergyInfo


def _gaps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(offsets)]


def test_all_at_once_when_the_rate_is_infinite() -> None:
    assert arrival_offsets(4, None, 1.0, seed=0) == [0.0] * 4
    assert build_config(("t", {"request_rate": "inf"})).request_rate is None
    assert build_config(("t", {"request_rate": float("inf")})).request_rate is None


def test_the_schedule_is_seeded_and_its_mean_gap_is_one_over_the_rate() -> None:
    first = arrival_offsets(20_000, 4.0, 1.0, seed=7)
    assert first == arrival_offsets(20_000, 4.0, 1.0, seed=7) and first[0] == 0.0
    assert first != arrival_offsets(20_000, 4.0, 1.0, seed=8)
    gaps = _gaps(first)
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    # burstiness 1: exponential gaps (a Poisson process), coefficient of variation 1
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize(("burstiness", "cv"), [(0.25, 2.0), (4.0, 0.5), (400.0, 0.05)])
def test_burstiness_is_the_gamma_shape_and_leaves_the_mean_rate_alone(burstiness: float, cv: float) -> None:
    gaps = _gaps(arrival_offsets(20_000, 2.0, burstiness, seed=1))
    assert statistics.fmean(gaps) == pytest.approx(0.5, rel=0.05)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(cv, rel=0.1)  # 1 / sqrt(k)


def _request(index: int, first: float, last: float) -> StreamedRequest:
    return StreamedRequest(index, 0.0, 0.0, [first, last])


def test_the_steady_state_runs_from_the_nth_first_token_to_the_requests_less_n_less_one_th_finish() -> None:
    # 6 requests at concurrency 2: first tokens at 1..6, finishes at 11..16
    run = LoadRun([_request(i, 1.0 + i, 11.0 + i) for i in range(6)], 0.0, 20.0, 0.1)
    assert steady_span(run, 2) == (2.0, 13.0)  # 2nd first token; 6 - 2 - 1 = 3rd finish
    assert steady_span(run, 5) is None  # 6 - 5 - 1 = 0 finishes: no steady state


def _answered(ttft: float, e2e: float, tokens: int = 11) -> RequestOutput:
    return RequestOutput(
        tokens, 8, first_token_s=ttft, e2e_s=e2e, queue_s=0.0, tokens_counted_by="server usage"
    )


def test_a_request_is_good_when_it_meets_every_slo_that_is_set() -> None:
    request = _answered(ttft=0.2, e2e=1.2)  # TPOT = (1.2 - 0.2) / 10 = 100 ms
    assert is_good(request, SloConfig(ttft_ms=200, tpot_ms=100, e2e_ms=1200))
    assert not is_good(request, SloConfig(ttft_ms=199))
    assert not is_good(request, SloConfig(tpot_ms=99))
    assert not is_good(request, SloConfig(e2e_ms=1199))
    assert is_good(RequestOutput(1, 8, first_token_s=0.1, e2e_s=0.1), SloConfig(tpot_ms=1))  # no TPOT
    assert not is_good(RequestOutput(0, 8, error="HTTP 500: boom"), SloConfig())


def test_goodput_failures_and_the_servers_batch_are_summed_over_the_windows() -> None:
    config = build_config(
        (
            "t",
            {
                "engine": "openai",
                "n_prompts": 3,
                "max_new_tokens": 11,
                "concurrency": 2,
                "slo": {"ttft_ms": 300},
            },
        )
    )
    requests = [_answered(0.2, 1.2), _answered(0.4, 1.4), RequestOutput(0, 8, error="HTTP 503: busy")]
    window = MeasuredWindow(
        EnergyReading(60.0, EnergyInfo(source="estimate", measured=False, method="m")), 2.0, requests, []
    )
    window.served_calls = [ServedCall(2.0, 0.5, 8, 1.9, 0.01, 1.8, None)]
    load = served_load(config, {"url": "http://h", "served_model": "m"}, [window], total_energy_j=60.0)
    assert (load.requests, load.failed_requests, load.failures) == (3, 1, ["1 x HTTP 503: busy"])
    assert load.good_requests == 1 and load.goodput_rps == pytest.approx(0.5)
    assert load.energy_per_good_request_j == pytest.approx(
        60.0
    ) and load.good_requests_per_kj == pytest.approx(1000 / 60)
    assert load.request_throughput_rps == pytest.approx(1.0)  # 2 answered in 2 s
    assert (load.mean_running_requests, load.mean_running_basis) == (1.8, "steady state")
    assert load.client_cpu_share == pytest.approx(0.25) and load.tokens_counted_by == "server usage"
    assert load.output_length_mismatches == 0
    flags = [w.flag for w in served_warnings(load, config.fixed_length, config.max_new_tokens)]
    assert flags == ["requests_failed"]


def test_load_settings_on_an_engine_that_sends_no_requests_are_a_preflight_problem() -> None:
    config = build_config(("t", {"engine": "transformers", "concurrency": 4, "server": {"url": "http://x"}}))
    (problem,) = served_only_problems(config, TransformersBackend())
    assert "concurrency, server apply to a served model only (engine='openai')" in problem
    assert served_only_problems(build_config(("t", {})), TransformersBackend()) == []
