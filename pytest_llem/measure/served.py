"""A served load's own figures: failures, goodput under SLOs, the client's share, the server's
batch, and what a meter cannot see.

Definitions (docs/served.md states them for readers):
- a request is **good** when it was answered and meets every SLO that is set: TTFT <= `ttft_ms`,
  TPOT <= `tpot_ms`, E2E <= `e2e_ms` (a request with one output token has no TPOT and meets a
  TPOT target); **goodput** = good requests / window seconds (vLLM's and AIPerf's definition),
  and energy per good request = window energy / good requests;
- `request_throughput_rps` = answered requests / window seconds;
- the client's CPU share = the CPU seconds of the thread that drove the load / window seconds:
  near 1.0 the client, not the server, set the pace (`client_saturated`);
- the server's mean running requests come from its `/metrics` (engines/served/prometheus.py),
  over ML.ENERGY's steady state where the load has one, else over the whole load.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from pytest_llem.energy.estimate import NoMeter
from pytest_llem.engines.base import RequestOutput, load_concurrency, server_running
from pytest_llem.measure.metrics import MeasuredWindow, mean_known, percentiles
from pytest_llem.schema.config import ExperimentConfig, SloConfig
from pytest_llem.schema.results import MeasurementWarning, ServedLoad

# the client's CPU share of one core above which it, not the server, may have set the pace
CLIENT_SATURATED_SHARE = 0.8
MAX_FAILURES_LISTED = 5


def unseen_server(
    backend: Any, config: ExperimentConfig, meter: Any, warnings: list[MeasurementWarning]
) -> tuple[Any, list[MeasurementWarning]]:
    """The meter to use for a served engine. The `estimate` meter counts this session's process
    tree; a server at a URL is outside it, so its figure would be the client's alone: no energy
    is stored, and one warning says so and how to measure it."""
    outside = getattr(backend, "outside_process_tree", None)
    if meter.name != "estimate" or outside is None or not outside(config):
        return meter, warnings
    return NoMeter(), [
        *[w for w in warnings if w.flag != "energy_estimated"],
        MeasurementWarning(
            flag="energy_not_visible",
            message=f"no energy figure: the server at server.url={config.server.url!r} runs outside this "
            "session's process tree, which the 'estimate' meter counts",
            value="estimate",
            threshold="a meter that sees the server",
            remedy="name the GPUs the server uses (device='cuda:N') so nvml/zeus read them, or let the "
            "experiment start the server (server.command)",
        ),
    ]


def is_good(request: RequestOutput, slo: SloConfig) -> bool:
    """Answered, and within every SLO that is set."""
    if request.error is not None or request.first_token_s is None or request.e2e_s is None:
        return False
    tpot = request.time_per_output_token_s
    return (
        (slo.ttft_ms is None or request.first_token_s * 1000 <= slo.ttft_ms)
        and (slo.tpot_ms is None or tpot is None or tpot * 1000 <= slo.tpot_ms)
        and (slo.e2e_ms is None or request.e2e_s * 1000 <= slo.e2e_ms)
    )


def _failures(requests: Sequence[RequestOutput]) -> list[str]:
    counts = collections.Counter(r.error for r in requests if r.error is not None)
    return [f"{count} x {error}" for error, count in counts.most_common(MAX_FAILURES_LISTED)]


def served_load(
    config: ExperimentConfig,
    settings: dict[str, Any],
    windows: Sequence[MeasuredWindow],
    total_energy_j: float | None,
) -> ServedLoad:
    """The record of a served experiment's measured windows."""
    requests = [r for w in windows for r in w.requests]
    answered = [r for r in requests if r.error is None]
    seconds = sum(w.window_s for w in windows)
    counted_by = sorted({r.tokens_counted_by for r in answered if r.tokens_counted_by})
    calls = [call for w in windows for call in w.served_calls]
    running, basis = server_running(calls)
    client_cpu = sum(c.client_cpu_s for c in calls)
    slo = config.slo
    has_slo = any(v is not None for v in (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms))
    good = sum(1 for r in requests if is_good(r, slo)) if has_slo else None
    mismatches = (
        sum(1 for r in answered if r.output_tokens != config.max_new_tokens) if config.fixed_length else 0
    )
    return ServedLoad(
        url=str(settings.get("url", "")),
        server_started=bool(settings.get("server_started", False)),
        api=config.server.api,
        served_model=str(settings.get("served_model", "")),
        request_rate=config.request_rate,
        burstiness=config.burstiness,
        concurrency=load_concurrency(config.concurrency, config.n_prompts),
        requests=len(requests),
        failed_requests=len(requests) - len(answered),
        failures=_failures(requests),
        tokens_counted_by=" and ".join(counted_by) or "none",
        output_length_mismatches=mismatches,
        request_throughput_rps=len(answered) / seconds if seconds > 0 else 0.0,
        e2e_s=percentiles([r.e2e_s for r in answered if r.e2e_s is not None]),
        client_queue_s=percentiles([r.queue_s for r in requests if r.queue_s is not None]),
        slo_ttft_ms=slo.ttft_ms,
        slo_tpot_ms=slo.tpot_ms,
        slo_e2e_ms=slo.e2e_ms,
        good_requests=good,
        goodput_rps=good / seconds if good is not None and seconds > 0 else None,
        energy_per_good_request_j=total_energy_j / good if total_energy_j is not None and good else None,
        good_requests_per_kj=good / (total_energy_j / 1000) if good is not None and total_energy_j else None,
        client_cpu_s=client_cpu,
        client_cpu_share=client_cpu / seconds if seconds > 0 else 0.0,
        mean_running_requests=running,
        mean_running_basis=basis,
        mean_kv_cache_usage=mean_known([c.mean_kv_cache_usage for c in calls]),
        metrics_note=next((c.metrics_note for c in calls if c.metrics_note), None),
    )


def served_warnings(load: ServedLoad, fixed_length: bool, max_new_tokens: int) -> list[MeasurementWarning]:
    """What a reader of a served figure must know: failed requests, outputs of the wrong length,
    a saturated client."""
    found = []
    if load.failed_requests:
        found.append(
            MeasurementWarning(
                flag="requests_failed",
                message=f"{load.failed_requests} of {load.requests} requests failed: {'; '.join(load.failures)}",
                value=load.failed_requests,
                threshold=0,
                remedy="read the server's log; lower request_rate or concurrency if it was overloaded",
            )
        )
    if fixed_length and load.output_length_mismatches:
        found.append(
            MeasurementWarning(
                flag="output_length_mismatch",
                message=f"{load.output_length_mismatches} answered requests did not generate exactly "
                f"max_new_tokens={max_new_tokens} tokens (the server ignored ignore_eos/min_tokens)",
                value=load.output_length_mismatches,
                threshold=0,
                remedy="use a server that honours ignore_eos or min_tokens (vLLM, SGLang, llama.cpp's "
                "llama-server), or set fixed_length=False",
            )
        )
    if load.client_cpu_share > CLIENT_SATURATED_SHARE:
        found.append(
            MeasurementWarning(
                flag="client_saturated",
                message=f"the load client used {load.client_cpu_share:.0%} of a core: it, not the server, "
                "may have set the pace",
                value=round(load.client_cpu_share, 3),
                threshold=CLIENT_SATURATED_SHARE,
                remedy="lower concurrency, or run the server on another machine than the client",
            )
        )
    return found
