"""Metrics of an experiment: measured windows in, `ExperimentResult` out.

Pure: no threads, no clocks, no I/O, no engine. Everything the lifecycle measured arrives as
`MeasuredWindow`s (one per repeat) plus a `MetricsContext` (what pre-flight, the meter and the
engine said), so every figure in a result can be checked against hand-built windows.
Definitions (the README states them the same way):

- output tokens: counted per request by the engine from the token ids it returned;
- `tokens_per_second = output_tokens / window_s`;
- `energy_per_output_token_j = energy_j / output_tokens`, and the baseline-adjusted twin with
  `energy_adjusted_j = energy_j - baseline_power_w * window_s` (never clamped);
- per request: TTFT = time from submission to the first output token; TPOT =
  (e2e - TTFT) / (output_tokens - 1); ITL = every gap between consecutive output tokens;
  reported as p50/p90/p99 over all requests (ITL: over all gaps) of all repeats;
- FLOPs: PaLM, 2 * N_non_embedding * tokens through a forward pass (first repeat).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_llem.energy.base import EnergyReading
from pytest_llem.engines.base import ParameterCount, RequestOutput, ServedCall
from pytest_llem.engines.flops import palm_from_count
from pytest_llem.hardware.sampler import Sample, throttle_summary
from pytest_llem.measure.phases import CallRecord, MeterFacts, phase_energy, steady_state
from pytest_llem.measure.statistics import summarise
from pytest_llem.measure.validity import ValidityFacts, validity
from pytest_llem.schema import quality
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.results import (
    EnergyInfo,
    ExperimentResult,
    MeasurementWarning,
    Percentiles,
    RepeatResult,
    RequestLatency,
    ThermalThrottle,
)


@dataclass
class MeasuredWindow:
    """What one measurement window produced: the meter's reading, the window's length, the
    engine's per-request outputs and the sampler's samples."""

    reading: EnergyReading
    window_s: float
    requests: list[RequestOutput]
    samples: list[Sample]
    reference: MeasuredWindow | None = None  # the reference model's adjacent window, when configured
    start_s: float | None = None  # the window's boundaries on the samples' clock (for the timeseries)
    end_s: float | None = None
    calls: list[CallRecord] = field(default_factory=list)  # the engine's steps, read against the meter
    served_calls: list[ServedCall] = field(default_factory=list)  # a served engine's calls (engines/served)


@dataclass(frozen=True)
class MetricsContext:
    """What the lifecycle knows besides the windows. Defaults describe a CPU run with no
    baseline and no warnings, so tests state only what they vary."""

    nodeid: str = "experiment"
    device: str | None = None
    model_source: str | None = None
    engine_version: str | None = None
    engine_settings: dict[str, Any] = field(default_factory=dict)
    baseline_power_w: float | None = None
    warnings: Sequence[MeasurementWarning] = ()
    gpu_count: int = 0  # GPUs the meter and sampler cover; 0 for a CPU run
    meter: MeterFacts | None = None  # what the meter's mid-window reads may claim (phases.py)
    max_num_seqs: int | None = None  # set for an engine that batches requests itself (vLLM)
    parameters: ParameterCount | None = None
    window_passes: int = 1  # passes of the workload in each window (calibrated)
    power_limits_w: Mapping[int, float | None] = field(default_factory=dict)  # by CUDA index, from NVML
    gpu_indices: Sequence[int] = ()
    served_concurrency: int | None = None  # a served engine's concurrency (engines/served)


def percentiles(values: Sequence[float]) -> Percentiles | None:
    """p50/p90/p99 by linear interpolation between order statistics (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        position = (len(ordered) - 1) * q
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return Percentiles(
        n=len(ordered), mean=math.fsum(ordered) / len(ordered), p50=at(0.5), p90=at(0.9), p99=at(0.99)
    )


def request_latency(requests: Sequence[RequestOutput]) -> RequestLatency | None:
    """TTFT, TPOT, ITL and E2E percentiles over `requests`; None when no request has timings."""
    ttft = [r.first_token_s for r in requests if r.first_token_s is not None]
    tpot = [t for r in requests if (t := r.time_per_output_token_s) is not None]
    itl = [gap for r in requests for gap in r.inter_token_latencies_s]
    e2e = [r.e2e_s for r in requests if r.e2e_s is not None]
    if not ttft and not tpot and not itl:
        return None
    return RequestLatency(
        scope="batch" if any(r.batch_level for r in requests) else "request",
        ttft_s=percentiles(ttft),
        e2e_s=percentiles(e2e),
        tpot_s=percentiles(tpot),
        itl_s=percentiles(itl),
    )


def mean_known(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are known (None where none is)."""
    known = [v for v in values if v is not None]
    return math.fsum(known) / len(known) if known else None


def repeat_result(index: int, window: MeasuredWindow, baseline_power_w: float | None) -> RepeatResult:
    tokens = sum(r.output_tokens for r in window.requests)
    energy = window.reading.energy_j
    adjusted = (
        energy - baseline_power_w * window.window_s
        if energy is not None and baseline_power_w is not None
        else None
    )
    reference = window.reference
    reference_energy = reference.reading.energy_j if reference else None
    return RepeatResult(
        index=index,
        window_s=window.window_s,
        output_tokens=tokens,
        input_tokens=sum(r.input_tokens for r in window.requests),
        energy_j=energy,
        per_device_j=window.reading.info.per_device_j,
        tokens_per_second=tokens / window.window_s if window.window_s > 0 else 0.0,
        energy_per_output_token_j=energy / tokens if energy is not None and tokens else None,
        energy_adjusted_j=adjusted,
        prefill_s=mean_known([r.first_token_s for r in window.requests]),
        time_per_output_token_s=mean_known([r.time_per_output_token_s for r in window.requests]),
        sample_count=len(window.samples),
        reference_window_s=reference.window_s if reference else None,
        reference_energy_j=reference_energy,
        relative_time=window.window_s / reference.window_s if reference else None,
        relative_energy=energy / reference_energy if energy is not None and reference_energy else None,
    )


def mean_assumptions(per_window: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A meter's per-window assumptions aggregated like `energy_j` (the mean of the windows):
    numbers that differ between windows are averaged, so the figures beside an energy figure
    are the ones that produced it; the aggregation is recorded when anything was averaged."""
    merged: dict[str, Any] = {}
    averaged = False
    for key in dict.fromkeys(k for window in per_window for k in window):
        values = [window.get(key) for window in per_window]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and len(set(values)) > 1:
            merged[key] = sum(values) / len(values)  # type: ignore[arg-type]
            averaged = True
        else:
            merged[key] = values[-1]
    if averaged:
        merged["aggregation"] = f"mean of {len(per_window)} windows, like energy_j"
    return merged


def energy_info(windows: Sequence[MeasuredWindow]) -> EnergyInfo:
    """The last window's provenance, with per-device energy and numeric assumptions averaged
    over windows and `measured` true only if every window was measured."""
    last = windows[-1].reading.info
    labels = {label for w in windows for label in w.reading.info.per_device_j}
    per_device = {
        label: sum(w.reading.info.per_device_j.get(label, 0.0) for w in windows) / len(windows)
        for label in labels
    }
    measured = all(w.reading.info.measured for w in windows)
    assumptions = mean_assumptions([w.reading.info.assumptions for w in windows])
    return last.model_copy(
        update={
            "per_device_j": dict(sorted(per_device.items())),
            "measured": measured,
            "assumptions": assumptions,
        }
    )


def drift_warnings(samples: Sequence[Sample]) -> list[MeasurementWarning | None]:
    by_device: dict[int, list[float]] = {}
    for sample in samples:
        if sample.temperature_c is not None:
            by_device.setdefault(sample.gpu_index, []).append(sample.temperature_c)
    return [quality.thermal_drift(t[0], t[-1], f"gpu{i}") for i, t in by_device.items() if t]


def dedupe(warnings: Sequence[MeasurementWarning]) -> list[MeasurementWarning]:
    """One warning per flag, so tables keyed by flag hold each once: a flag raised for several
    metrics or devices (high_cv, thermal_drift) keeps the first value, threshold and remedy
    and joins the distinct messages."""
    merged: dict[str, MeasurementWarning] = {}
    for warning in warnings:
        first = merged.get(warning.flag)
        if first is None:
            merged[warning.flag] = warning
        elif warning.message not in first.message.split("; "):
            merged[warning.flag] = first.model_copy(update={"message": f"{first.message}; {warning.message}"})
    return list(merged.values())


def experiment_result(
    config: ExperimentConfig, windows: Sequence[MeasuredWindow], context: MetricsContext
) -> ExperimentResult:
    """The result of an experiment whose `windows` (one per repeat, at least one) were measured."""
    repeats = [repeat_result(i, w, context.baseline_power_w) for i, w in enumerate(windows)]
    total_tokens = sum(r.output_tokens for r in repeats)
    total_window = sum(r.window_s for r in repeats)
    energies = [r.energy_j for r in repeats if r.energy_j is not None]
    has_energy = len(energies) == len(repeats)
    adjusted = [r.energy_adjusted_j for r in repeats if r.energy_adjusted_j is not None]
    has_adjusted = bool(adjusted) and len(adjusted) == len(repeats)
    mean_adjusted = sum(adjusted) / len(adjusted) if has_adjusted else None
    info = energy_info(windows)
    requested = config.n_prompts * config.max_new_tokens  # per pass over the prompts
    requested_per_window = requested * context.window_passes
    samples = [s for w in windows for s in w.samples]

    stats = {"tokens_per_second": summarise([r.tokens_per_second for r in repeats])}
    stats["window_s"] = summarise([r.window_s for r in repeats])
    if has_energy:
        stats["energy_j"] = summarise(energies)
        per_token = [r.energy_per_output_token_j for r in repeats if r.energy_per_output_token_j is not None]
        if per_token:  # none when no window produced a token (every served request failed)
            stats["energy_per_output_token_j"] = summarise(per_token)

    warnings = list(context.warnings)
    warnings.extend(quality.worst_per_flag([w for window in windows for w in window.reading.warnings]))
    if (
        info.source != "none"
        and not info.measured
        and not any(w.flag == "energy_estimated" for w in warnings)
    ):
        warnings.append(quality.energy_estimated(info.source, f"the '{info.source}' meter models energy"))
    meter = context.meter
    candidates = [
        quality.short_window(total_window / len(repeats), meter.source, meter.update_period_s)
        if meter is not None and info.source != "none"
        else None
    ]
    candidates += [
        quality.output_tokens_mismatch(r.output_tokens, requested_per_window, context.window_passes)
        for r in repeats
    ]
    if mean_adjusted is not None:
        candidates.append(quality.negative_adjusted_energy(mean_adjusted))
    candidates.append(quality.high_cv("tokens_per_second", stats["tokens_per_second"].cv))
    if "energy_per_output_token_j" in stats:
        candidates.append(quality.high_cv("energy_per_output_token_j", stats["energy_per_output_token_j"].cv))
    throttle: ThermalThrottle | None = None
    if context.gpu_count and config.energy.sampler:
        candidates.append(quality.low_sample_count(min(len(w.samples) // context.gpu_count for w in windows)))
        candidates.extend(drift_warnings(samples))
        throttle = throttle_summary(samples, 1.0 / config.energy.sample_hz)
        candidates.append(quality.throttling(throttle.kinds, throttle.seconds))
    warnings.extend(w for w in candidates if w is not None)

    total_energy = sum(energies) if has_energy else None
    total_input = sum(r.input_tokens for r in repeats)
    total_requests = sum(len(w.requests) for w in windows)

    # a window holds `window_passes` passes over the prompts, its requests in pass order: the
    # result's token counts are those of one pass (what a user asserts), whatever the calibration
    first = windows[0].requests
    first_pass = first[: len(first) // context.window_passes] if context.window_passes > 1 else first

    def per(count: float) -> float | None:
        return total_energy / count if total_energy is not None and count > 0 else None

    flops = None
    if context.parameters is not None:
        forward_tokens = sum(r.forward_tokens for r in windows[0].requests)
        flops = palm_from_count(context.parameters, forward_tokens, repeats[0].output_tokens)
    facts = ValidityFacts(
        gpu_indices=context.gpu_indices,
        power_limits_w=context.power_limits_w,
        sampler=config.energy.sampler,
        sample_hz=config.energy.sample_hz,
        min_window_s=config.energy.min_valid_window_s,
        requested_output_tokens=requested_per_window,
        fixed_length=config.fixed_length,
        served_concurrency=context.served_concurrency,
    )
    result = ExperimentResult(
        nodeid=context.nodeid,
        status="passed",
        config=config,
        config_hash=config.config_hash(),
        model_source=context.model_source,
        engine=config.engine,
        engine_version=context.engine_version,
        engine_settings=dict(context.engine_settings),
        device=context.device,
        output_tokens=sum(r.output_tokens for r in first_pass),
        requested_output_tokens=requested,
        window_passes=context.window_passes,
        window_output_tokens=repeats[0].output_tokens,
        input_tokens=sum(r.input_tokens for r in first_pass),
        window_s=total_window / len(repeats),
        tokens_per_second=total_tokens / total_window if total_window > 0 else 0.0,
        prefill_s=mean_known([r.prefill_s for r in repeats]),
        time_per_output_token_s=mean_known([r.time_per_output_token_s for r in repeats]),
        latency=request_latency([r for w in windows for r in w.requests]),
        energy_j=sum(energies) / len(energies) if has_energy else None,
        energy_per_output_token_j=sum(energies) / total_tokens if has_energy and total_tokens else None,
        baseline_power_w=context.baseline_power_w if has_energy else None,
        energy_adjusted_j=mean_adjusted,
        energy_adjusted_per_output_token_j=sum(adjusted) / total_tokens
        if has_adjusted and total_tokens
        else None,
        energy_per_input_token_j=per(total_input),
        energy_per_total_token_j=per(total_input + total_tokens),
        energy_per_request_j=per(total_requests),
        average_power_w=per(total_window),
        output_tokens_per_joule=total_tokens / total_energy if total_energy else None,
        energy=info,
        stats=stats,
        repeats=repeats,
        flops=flops,
        thermal_throttle=throttle,
        warnings=dedupe(warnings),
        validity=validity(info, windows, facts),
    )
    calls = [call for window in windows for call in window.calls]
    if context.meter is not None and calls:
        update: dict[str, Any] = {"phases": phase_energy(calls, context.meter)}
        if context.max_num_seqs is not None:
            update["steady_state"] = steady_state(calls, context.max_num_seqs, context.meter)
        result = result.model_copy(update=update)
    return without_invalid_energy(result)


_ENERGY_FIELDS = (
    "energy_j",
    "energy_per_output_token_j",
    "energy_adjusted_j",
    "energy_adjusted_per_output_token_j",
    "energy_per_input_token_j",
    "energy_per_total_token_j",
    "energy_per_request_j",
    "average_power_w",
    "output_tokens_per_joule",
)
_PHASE_ENERGY_FIELDS = (
    "prefill_energy_j",
    "prefill_energy_per_input_token_j",
    "decode_energy_j",
    "decode_energy_per_output_token_j",
)
_STEADY_ENERGY_FIELDS = ("energy_j", "energy_per_output_token_j", "average_power_w")
_REPEAT_ENERGY_FIELDS = (
    "energy_j",
    "energy_per_output_token_j",
    "energy_adjusted_j",
    "reference_energy_j",
    "relative_energy",
)


def without_invalid_energy(result: ExperimentResult) -> ExperimentResult:
    """An invalid experiment stores no energy figure that looks fine: every energy field is
    null (the measured values stay in `validity.checks`, for inspection)."""
    if result.validity is None or result.validity.status != "invalid":
        return result
    repeats = [
        r.model_copy(update={**dict.fromkeys(_REPEAT_ENERGY_FIELDS), "per_device_j": {}})
        for r in result.repeats
    ]
    stats = {k: v for k, v in result.stats.items() if not k.startswith("energy")}
    update: dict[str, Any] = {**dict.fromkeys(_ENERGY_FIELDS), "repeats": repeats, "stats": stats}
    reason = "the experiment is invalid (see validity)"
    if result.phases is not None:
        update["phases"] = result.phases.model_copy(
            update={
                **dict.fromkeys(_PHASE_ENERGY_FIELDS),
                "prefill_null_reason": reason,
                "decode_null_reason": reason,
            }
        )
    if result.steady_state is not None:
        update["steady_state"] = result.steady_state.model_copy(
            update={**dict.fromkeys(_STEADY_ENERGY_FIELDS), "null_reason": reason}
        )
    return result.model_copy(update=update)
