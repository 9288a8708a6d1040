"""Metrics of an experiment's windows: aggregates, latency percentiles, warnings.

Pure: no threads, no clocks, no I/O, no engine. Everything the lifecycle measured arrives as
`MeasuredWindow`s (one per repeat) plus a `MetricsContext` (what pre-flight, the meter, the
engine and the lifecycle said), so every figure in a result can be checked against hand-built
windows; `result.py` builds the `ExperimentResult` from them.
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
from pytest_llem.hardware.sampler import Sample, throttle_summary
from pytest_llem.measure.emissions import CarbonIntensity
from pytest_llem.measure.phases import CallRecord, MeterFacts
from pytest_llem.measure.statistics import summarise
from pytest_llem.schema import quality
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.results import (
    EnergyInfo,
    MeasurementWarning,
    Percentiles,
    RepeatResult,
    RequestLatency,
    Stats,
    ThermalThrottle,
    WarmupResult,
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
    served_settings: Mapping[str, Any] | None = None  # a served engine's load settings: a ServedLoad record
    # what the lifecycle adds around the windows
    engine: str | None = None  # what ran, where not the configured engine (llem.measure's own code)
    warmup: WarmupResult | None = None
    baseline_skipped_reason: str | None = None
    window_calibration: str | None = None
    timeseries_path: str | None = None
    counted_flops: float | None = None  # torch's FLOP counter over one pass, where asked for
    carbon: CarbonIntensity | None = None  # the grid's intensity, for emissions


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


def repeat_result(
    index: int, window: MeasuredWindow, baseline_power_w: float | None, withhold_energy: bool = False
) -> RepeatResult:
    """One window's figures; with `withhold_energy` (an invalid experiment) no energy figure."""
    tokens = sum(r.output_tokens for r in window.requests)
    energy = None if withhold_energy else window.reading.energy_j
    adjusted = (
        energy - baseline_power_w * window.window_s
        if energy is not None and baseline_power_w is not None
        else None
    )
    reference = window.reference
    reference_energy = reference.reading.energy_j if reference and not withhold_energy else None
    return RepeatResult(
        index=index,
        window_s=window.window_s,
        output_tokens=tokens,
        input_tokens=sum(r.input_tokens for r in window.requests),
        energy_j=energy,
        per_device_j={} if withhold_energy else window.reading.info.per_device_j,
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
    return EnergyInfo(
        source=last.source,
        measured=measured,
        method=last.method,
        assumptions=assumptions,
        per_device_j=dict(sorted(per_device.items())),
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
            merged[warning.flag] = MeasurementWarning(
                flag=first.flag,
                message=f"{first.message}; {warning.message}",
                value=first.value,
                threshold=first.threshold,
                remedy=first.remedy,
            )
    return list(merged.values())


@dataclass(frozen=True)
class Aggregate:
    """The windows' figures, before any rule about publishing them (validity decides that)."""

    repeats: list[RepeatResult]  # with their energy, as measured
    info: EnergyInfo
    stats: dict[str, Stats]
    total_tokens: int
    total_window_s: float
    total_input_tokens: int
    total_requests: int
    energies: list[float]  # one per window where every window has one, else empty
    adjusted: list[float]  # baseline-adjusted, likewise
    first_pass: list[RequestOutput]  # the first window's first pass over the prompts
    throttle: ThermalThrottle | None

    @property
    def has_energy(self) -> bool:
        return bool(self.energies)

    @property
    def mean_adjusted_j(self) -> float | None:
        return sum(self.adjusted) / len(self.adjusted) if self.adjusted else None


def aggregate(
    config: ExperimentConfig, windows: Sequence[MeasuredWindow], context: MetricsContext
) -> Aggregate:
    """Totals, means and statistics over the windows (one per repeat, at least one)."""
    repeats = [repeat_result(i, w, context.baseline_power_w) for i, w in enumerate(windows)]
    energies = [r.energy_j for r in repeats if r.energy_j is not None]
    adjusted = [r.energy_adjusted_j for r in repeats if r.energy_adjusted_j is not None]
    stats = {"tokens_per_second": summarise([r.tokens_per_second for r in repeats])}
    stats["window_s"] = summarise([r.window_s for r in repeats])
    if len(energies) == len(repeats):
        stats["energy_j"] = summarise(energies)
        per_token = [r.energy_per_output_token_j for r in repeats if r.energy_per_output_token_j is not None]
        if per_token:  # none when no window produced a token (every served request failed)
            stats["energy_per_output_token_j"] = summarise(per_token)
    throttle = None
    if context.gpu_count and config.energy.sampler:
        samples = [s for w in windows for s in w.samples]
        throttle = throttle_summary(samples, 1.0 / config.energy.sample_hz)
    # a window holds `window_passes` passes over the prompts, its requests in pass order: the
    # result's token counts are those of one pass (what a user asserts), whatever the calibration
    first = windows[0].requests
    return Aggregate(
        repeats=repeats,
        info=energy_info(windows),
        stats=stats,
        total_tokens=sum(r.output_tokens for r in repeats),
        total_window_s=sum(r.window_s for r in repeats),
        total_input_tokens=sum(r.input_tokens for r in repeats),
        total_requests=sum(len(w.requests) for w in windows),
        energies=energies if len(energies) == len(repeats) else [],
        adjusted=adjusted if adjusted and len(adjusted) == len(repeats) else [],
        first_pass=first[: len(first) // context.window_passes] if context.window_passes > 1 else first,
        throttle=throttle,
    )


def requested_tokens(config: ExperimentConfig, passes: int = 1) -> int:
    """The output tokens asked for in `passes` passes over the prompts (one pass: what the
    result reports; a window's passes: what its tokens are checked against)."""
    return config.n_prompts * config.max_new_tokens * passes


def result_warnings(
    config: ExperimentConfig, windows: Sequence[MeasuredWindow], figures: Aggregate, context: MetricsContext
) -> list[MeasurementWarning]:
    """What a reader of the figures must know: the context's and the meter's warnings, then the
    window's own (length, token counts, adjusted energy, spread, samples, drift, throttling),
    one per flag."""
    info = figures.info
    warnings = list(context.warnings)
    warnings.extend(quality.worst_per_flag([w for window in windows for w in window.reading.warnings]))
    if (
        info.source != "none"
        and not info.measured
        and not any(w.flag == "energy_estimated" for w in warnings)
    ):
        warnings.append(quality.energy_estimated(info.source, f"the '{info.source}' meter models energy"))
    meter = context.meter
    requested_per_window = requested_tokens(config, context.window_passes)
    candidates = [
        quality.short_window(
            figures.total_window_s / len(figures.repeats), meter.source, meter.update_period_s
        )
        if meter is not None and info.source != "none"
        else None
    ]
    candidates += [
        quality.output_tokens_mismatch(r.output_tokens, requested_per_window, context.window_passes)
        for r in figures.repeats
    ]
    if figures.mean_adjusted_j is not None:
        candidates.append(quality.negative_adjusted_energy(figures.mean_adjusted_j))
    candidates.append(quality.high_cv("tokens_per_second", figures.stats["tokens_per_second"].cv))
    if "energy_per_output_token_j" in figures.stats:
        candidates.append(
            quality.high_cv("energy_per_output_token_j", figures.stats["energy_per_output_token_j"].cv)
        )
    if figures.throttle is not None:
        candidates.append(quality.low_sample_count(min(len(w.samples) // context.gpu_count for w in windows)))
        candidates.extend(drift_warnings([s for w in windows for s in w.samples]))
        candidates.append(quality.throttling(figures.throttle.kinds, figures.throttle.seconds))
    warnings.extend(w for w in candidates if w is not None)
    return dedupe(warnings)
