"""The one builder of an `ExperimentResult` from measured windows: every field set once, typed.

The lifecycle gathers what it knows into a `MetricsContext` (pre-flight, the meter, the engine,
the warmup, the calibration, the timeseries file, the grid's intensity); `experiment_result`
aggregates the windows (metrics.py), decides the warnings, judges validity (validity.py), and
then constructs the result in one call. Validity comes before construction because it decides
what is published: an invalid experiment stores no energy figure that looks fine - every energy
field, a window's, a phase's and the steady state's included, is null (the measured values
stay in `validity.checks`, for inspection), and nothing derived from energy (a served load's
energy per good request, emissions) is computed from them.

Pure, like metrics.py: no threads, no clocks, no I/O, no engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pytest_llem.engines.flops import palm_from_count
from pytest_llem.measure.emissions import emissions_of
from pytest_llem.measure.metrics import (
    Aggregate,
    MeasuredWindow,
    MetricsContext,
    aggregate,
    mean_known,
    repeat_result,
    request_latency,
    requested_tokens,
    result_warnings,
)
from pytest_llem.measure.phases import phase_energy, steady_state
from pytest_llem.measure.served import served_load, served_warnings
from pytest_llem.measure.validity import ValidityFacts, validity
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.results import ExperimentResult, FlopsResult, PhaseEnergy, SteadyState, energy_label

INVALID = "the experiment is invalid (see validity)"


@dataclass(frozen=True)
class EnergyFigures:
    """The experiment's energy figures as published: all None where none is (no meter, a
    window without a reading, or an invalid experiment)."""

    energy_j: float | None = None
    per_output_token_j: float | None = None
    adjusted_j: float | None = None
    adjusted_per_output_token_j: float | None = None
    per_input_token_j: float | None = None
    per_total_token_j: float | None = None
    per_request_j: float | None = None
    average_power_w: float | None = None
    output_tokens_per_joule: float | None = None


def energy_figures(figures: Aggregate) -> EnergyFigures:
    """Means over the windows (energy) and totals divided by totals (per token, per request,
    power): `energy_per_output_token_j = sum(energy) / sum(output tokens)`."""
    if not figures.has_energy:
        return EnergyFigures()
    total = sum(figures.energies)
    tokens = figures.total_tokens

    def per(count: float) -> float | None:
        return total / count if count > 0 else None

    return EnergyFigures(
        energy_j=total / len(figures.energies),
        per_output_token_j=per(tokens),
        adjusted_j=figures.mean_adjusted_j,
        adjusted_per_output_token_j=sum(figures.adjusted) / tokens if figures.adjusted and tokens else None,
        per_input_token_j=per(figures.total_input_tokens),
        per_total_token_j=per(figures.total_input_tokens + tokens),
        per_request_j=per(figures.total_requests),
        average_power_w=per(figures.total_window_s),
        output_tokens_per_joule=tokens / total if total else None,
    )


def _flops(
    windows: Sequence[MeasuredWindow], figures: Aggregate, context: MetricsContext
) -> FlopsResult | None:
    """PaLM FLOPs over the first window (and torch's counted FLOPs, where they were counted)."""
    if context.parameters is None:
        return None
    forward_tokens = sum(r.forward_tokens for r in windows[0].requests)
    return palm_from_count(
        context.parameters, forward_tokens, figures.repeats[0].output_tokens, context.counted_flops
    )


def _phases(
    windows: Sequence[MeasuredWindow], context: MetricsContext, withheld: str | None
) -> tuple[PhaseEnergy | None, SteadyState | None]:
    """Prefill/decode and the steady state, where the engine reported its steps."""
    calls = [call for window in windows for call in window.calls]
    if context.meter is None or not calls:
        return None, None
    phases = phase_energy(calls, context.meter, withheld)
    if context.max_num_seqs is None:
        return phases, None
    return phases, steady_state(calls, context.max_num_seqs, context.meter, withheld)


def experiment_result(
    config: ExperimentConfig, windows: Sequence[MeasuredWindow], context: MetricsContext
) -> ExperimentResult:
    """The result of an experiment whose `windows` (one per repeat, at least one) were measured."""
    figures = aggregate(config, windows, context)
    facts = ValidityFacts(
        gpu_indices=context.gpu_indices,
        power_limits_w=context.power_limits_w,
        sampler=config.energy.sampler,
        sample_hz=config.energy.sample_hz,
        min_window_s=config.energy.min_valid_window_s,
        requested_output_tokens=requested_tokens(config, context.window_passes),
        fixed_length=config.fixed_length,
        served_concurrency=context.served_concurrency,
    )
    judged = validity(figures.info, windows, facts)
    withheld = INVALID if judged is not None and judged.status == "invalid" else None
    energy = EnergyFigures() if withheld else energy_figures(figures)
    repeats = (
        [repeat_result(i, w, context.baseline_power_w, withhold_energy=True) for i, w in enumerate(windows)]
        if withheld
        else figures.repeats
    )
    stats = {k: v for k, v in figures.stats.items() if not (withheld and k.startswith("energy"))}
    phases, steady = _phases(windows, context, withheld)
    warnings = result_warnings(config, windows, figures, context)
    served = None
    if context.served_settings is not None:
        total_j = energy.energy_j * len(windows) if energy.energy_j is not None else None
        served = served_load(config, dict(context.served_settings), windows, total_j)
        warnings += served_warnings(served, config.fixed_length, config.max_new_tokens)
    total_window = figures.total_window_s
    return ExperimentResult(
        nodeid=context.nodeid,
        status="passed",
        config=config,
        config_hash=config.config_hash(),
        model_source=context.model_source,
        engine=context.engine or config.engine,
        engine_version=context.engine_version,
        engine_settings=dict(context.engine_settings),
        device=context.device,
        output_tokens=sum(r.output_tokens for r in figures.first_pass),
        requested_output_tokens=requested_tokens(config),
        window_passes=context.window_passes,
        window_output_tokens=figures.repeats[0].output_tokens,
        window_calibration=context.window_calibration,
        input_tokens=sum(r.input_tokens for r in figures.first_pass),
        window_s=total_window / len(repeats),
        tokens_per_second=figures.total_tokens / total_window if total_window > 0 else 0.0,
        prefill_s=mean_known([r.prefill_s for r in repeats]),
        time_per_output_token_s=mean_known([r.time_per_output_token_s for r in repeats]),
        latency=request_latency([r for w in windows for r in w.requests]),
        energy_j=energy.energy_j,
        energy_per_output_token_j=energy.per_output_token_j,
        baseline_power_w=context.baseline_power_w if figures.has_energy else None,
        baseline_skipped_reason=context.baseline_skipped_reason,
        energy_adjusted_j=energy.adjusted_j,
        energy_adjusted_per_output_token_j=energy.adjusted_per_output_token_j,
        energy_per_input_token_j=energy.per_input_token_j,
        energy_per_total_token_j=energy.per_total_token_j,
        energy_per_request_j=energy.per_request_j,
        average_power_w=energy.average_power_w,
        output_tokens_per_joule=energy.output_tokens_per_joule,
        energy=figures.info,
        stats=stats,
        repeats=repeats,
        warmup=context.warmup,
        flops=_flops(windows, figures, context),
        thermal_throttle=figures.throttle,
        phases=phases,
        steady_state=steady,
        served=served,
        warnings=warnings,
        validity=judged,
        timeseries_path=context.timeseries_path,
        emissions=emissions_of(
            energy.per_output_token_j, energy.energy_j, energy_label(figures.info), context.carbon
        ),
    )
