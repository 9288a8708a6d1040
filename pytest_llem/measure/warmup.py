"""Warmup before measurement: a fixed count, or until latency stops moving (CV convergence);
then the thermal floor, a wait that lets a GPU's temperature settle."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from pytest_llem.hardware import clock as clocks
from pytest_llem.schema.config import WarmupConfig
from pytest_llem.schema.results import WarmupResult

GPU_THERMAL_FLOOR_S = 60.0


def _cv(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else None


def run_warmup(config: WarmupConfig, step: Callable[[int], float]) -> WarmupResult:
    """Call `step(i)` (one generate, returns its latency) until the warmup policy is satisfied."""
    latencies: list[float] = []
    if not config.convergence:
        for index in range(config.n_warmup):
            latencies.append(step(index))
        return WarmupResult(
            mode="fixed",
            iterations=len(latencies),
            converged=True,
            final_cv=_cv(latencies),
            target_cv=None,
            max_prompts=None,
            latencies_s=latencies,
            thermal_floor_s=0.0,
            thermal_floor_waited_s=0.0,
        )
    converged, cv = False, None
    for index in range(config.max_prompts):
        latencies.append(step(index))
        if len(latencies) >= max(config.min_prompts, config.cv_window):
            cv = _cv(latencies[-config.cv_window :])
            if cv is not None and cv < config.cv_threshold:
                converged = True
                break
    return WarmupResult(
        mode="convergence",
        iterations=len(latencies),
        converged=converged,
        final_cv=cv,
        target_cv=config.cv_threshold,
        max_prompts=config.max_prompts,
        latencies_s=latencies,
        thermal_floor_s=0.0,
        thermal_floor_waited_s=0.0,
    )


def _no_announcement(seconds: float) -> None:
    pass


def thermal_floor(
    result: WarmupResult,
    configured_s: float | None,
    uses_gpu: bool,
    read_temperature: Callable[[], float | None],
    clock: clocks.Clock | None = None,
    announce: Callable[[float], None] = _no_announcement,
) -> WarmupResult:
    """Wait the thermal floor after warmup, or record why it was skipped.

    The wait and its measured length come from one clock (`clock`, else the current one), so a
    simulated run reports the simulated wait rather than the few microseconds it really took.
    `announce(seconds)` is told just before a wait begins (progress shows a countdown)."""
    floor_s = configured_s if configured_s is not None else (GPU_THERMAL_FLOOR_S if uses_gpu else 0.0)
    if floor_s == 0:
        reason = "disabled" if configured_s == 0 else "CPU run: no device temperature to settle"
        return _with_floor(result, 0.0, 0.0, reason)
    if read_temperature() is None:
        return _with_floor(result, floor_s, 0.0, "no temperature can be read")
    clock = clock or clocks.current()
    announce(floor_s)
    start = clock.now()
    clock.sleep(floor_s)
    return _with_floor(result, floor_s, clock.now() - start, None)


def _with_floor(result: WarmupResult, floor_s: float, waited_s: float, skipped: str | None) -> WarmupResult:
    """The warmup's record with the thermal floor's: configured, waited, or why skipped."""
    return WarmupResult(
        mode=result.mode,
        iterations=result.iterations,
        converged=result.converged,
        final_cv=result.final_cv,
        target_cv=result.target_cv,
        max_prompts=result.max_prompts,
        latencies_s=result.latencies_s,
        thermal_floor_s=floor_s,
        thermal_floor_waited_s=waited_s,
        thermal_floor_skipped_reason=skipped,
    )
