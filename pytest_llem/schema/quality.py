"""Measurement-quality warnings: a stable flag, the measured value, the threshold, a remedy.

They describe how far a figure can be trusted; they never fail a run. Thresholds live here
once so the README and the code cannot disagree.
"""

from __future__ import annotations

from pytest_llem.schema.results import MeasurementWarning

# a window should hold this many updates of its meter's reading, so one step is <= 2% of it
SHORT_WINDOW_UPDATES = 50
THERMAL_DRIFT_C = 10.0
LOW_SAMPLE_COUNT = 10
HIGH_CV = 0.10


def short_window(window_s: float, meter: str, update_period_s: float | None) -> MeasurementWarning | None:
    """A window too short for the meter that measured it: under `SHORT_WINDOW_UPDATES` updates
    of its reading (NVML's 100 ms energy counter: 5 s, the default GPU window; RAPL's 1 ms:
    50 ms; the estimate's 10 ms CPU ticks: 0.5 s, half the default CPU window), where one step
    of the reading is more than 2% of the window. Silent where the meter has no reading that
    steps (none, or an unknown period): raising the window would change nothing it says."""
    if update_period_s is None or update_period_s <= 0:
        return None
    threshold = SHORT_WINDOW_UPDATES * update_period_s
    if window_s >= threshold:
        return None
    return MeasurementWarning(
        flag="short_window",
        message=(
            f"measurement window {window_s:.2f} s holds fewer than {SHORT_WINDOW_UPDATES} updates of the "
            f"{meter!r} meter's reading (every {update_period_s:g} s): one step is more than "
            f"{100 / SHORT_WINDOW_UPDATES:g}% of the window"
        ),
        value=window_s,
        threshold=threshold,
        remedy=f"raise min_window_s to at least {threshold:g} s (or n_prompts, max_new_tokens)",
    )


def persistence_mode_off(device_label: str) -> MeasurementWarning:
    return MeasurementWarning(
        flag="persistence_mode_off",
        message=f"{device_label}: persistence mode is off; the driver may unload between runs",
        value="off",
        threshold="on",
        remedy="sudo nvidia-smi -pm 1",
    )


def thermal_drift(start_c: float, end_c: float, device_label: str) -> MeasurementWarning | None:
    drift = abs(end_c - start_c)
    if drift <= THERMAL_DRIFT_C:
        return None
    return MeasurementWarning(
        flag="thermal_drift",
        message=f"{device_label}: temperature moved {drift:.1f} °C during measurement ({start_c:.0f} -> {end_c:.0f})",
        value=drift,
        threshold=THERMAL_DRIFT_C,
        remedy="enable or lengthen the thermal floor (warmup.thermal_floor_s) so the device settles first",
    )


def low_sample_count(count: int) -> MeasurementWarning | None:
    if count >= LOW_SAMPLE_COUNT:
        return None
    return MeasurementWarning(
        flag="low_sample_count",
        message=f"only {count} power samples in the window",
        value=count,
        threshold=LOW_SAMPLE_COUNT,
        remedy="lengthen the window or raise energy.sample_hz",
    )


def energy_estimated(source: str, reason: str) -> MeasurementWarning:
    return MeasurementWarning(
        flag="energy_estimated",
        message=f"energy is estimated by '{source}', not measured: {reason}",
        value=source,
        threshold="measured",
        remedy="run on hardware with an energy sensor (NVIDIA GPU via nvml/zeus, or readable RAPL)",
    )


def output_tokens_mismatch(actual: int, requested: int, passes: int = 1) -> MeasurementWarning | None:
    """A window's output tokens against what its `passes` passes over the prompts asked for
    (n_prompts x max_new_tokens each)."""
    if actual == requested:
        return None
    scope = f" in a window of {passes} passes over the prompts" if passes > 1 else ""
    return MeasurementWarning(
        flag="output_tokens_mismatch",
        message=f"generated {actual} output tokens, {requested} were requested{scope}",
        value=actual,
        threshold=requested,
        remedy="keep fixed_length=True so every run generates exactly max_new_tokens",
    )


def negative_adjusted_energy(adjusted_j: float) -> MeasurementWarning | None:
    if adjusted_j >= 0:
        return None
    return MeasurementWarning(
        flag="negative_adjusted_energy",
        message=f"baseline-adjusted energy is negative ({adjusted_j:.3f} J): the idle baseline is too high",
        value=adjusted_j,
        threshold=0.0,
        remedy="re-measure the idle baseline on a quiet machine (shorter TTL, longer baseline_s)",
    )


def throttling(kinds: list[str], seconds: float) -> MeasurementWarning | None:
    if not kinds:
        return None
    return MeasurementWarning(
        flag="throttling",
        message=f"clocks were throttled for {seconds:.1f} s ({', '.join(kinds)})",
        value=seconds,
        threshold=0.0,
        remedy="improve cooling or lower the power draw; compare only unthrottled runs",
    )


def high_cv(metric: str, cv: float | None) -> MeasurementWarning | None:
    if cv is None or cv <= HIGH_CV:
        return None
    return MeasurementWarning(
        flag="high_cv",
        message=f"{metric} varies {cv:.1%} across repeats",
        value=cv,
        threshold=HIGH_CV,
        remedy="quiet the machine, pin threads, or raise repeats so the mean is trustworthy",
    )


def energy_counter_unreadable(device_label: str, fallback: str) -> MeasurementWarning:
    return MeasurementWarning(
        flag="energy_counter_unreadable",
        message=f"{device_label}: energy counter could not be read at the end of the window; used {fallback}",
        value="unreadable",
        threshold="readable",
        remedy="check the GPU's health (nvidia-smi -q); repeat the experiment to confirm the figure",
    )


def energy_counter_reset(device_label: str, fallback: str) -> MeasurementWarning:
    return MeasurementWarning(
        flag="energy_counter_reset",
        message=f"{device_label}: energy counter went backwards (driver reload?); used {fallback} instead",
        value="reset",
        threshold="monotonic",
        remedy="avoid driver reloads during a run; repeat the experiment to confirm the figure",
    )


def energy_delta_implausible(
    device_label: str, delta_j: float, limit_j: float, fallback: str
) -> MeasurementWarning:
    return MeasurementWarning(
        flag="energy_delta_implausible",
        message=(
            f"{device_label}: the energy counter delta {delta_j:.1f} J exceeds the board power limit "
            f"x window ({limit_j:.1f} J); used {fallback} instead"
        ),
        value=delta_j,
        threshold=limit_j,
        remedy="check for counter resets or driver reloads (nvidia-smi -q); repeat the experiment",
    )


def power_integration(device_label: str, sample_hz: float) -> MeasurementWarning:
    return MeasurementWarning(
        flag="power_integration",
        message=(
            f"{device_label}: no energy counter; energy integrates power polled at {sample_hz:g} Hz, and "
            "NVML power is a 1 s average on Ampere and later (except A100), so power changes are smeared "
            "by up to 1 s and short windows are biased"
        ),
        value="power integration",
        threshold="energy counter",
        remedy="prefer a GPU with an energy counter (Volta or later), or windows of 30 s or more",
    )


def cpu_contention(share: float | None, threshold: float) -> MeasurementWarning | None:
    if share is None or share <= threshold:
        return None
    return MeasurementWarning(
        flag="cpu_contention",
        message=f"other processes used {share:.0%} of the machine's CPU capacity during the window",
        value=share,
        threshold=threshold,
        remedy="measure on a quiet machine: CPU-time estimates rise when threads wait for a core",
    )


# meters whose figure covers the whole node (CPU package and DRAM counters, the machine's CPU
# share), so it cannot be split between experiments that run at once; GPU meters read one board
NODE_WIDE_SOURCES = frozenset({"rapl", "codecarbon", "estimate"})


def node_wide(source: str, per_device: list[str]) -> bool:
    """Whether an energy figure covers the node: a node-wide meter, or a GPU meter that also
    read CPU/DRAM counters (Zeus does where RAPL is readable)."""
    return source in NODE_WIDE_SOURCES or any(not label.startswith("gpu") for label in per_device)


def shared_node(source: str, concurrent: int) -> MeasurementWarning | None:
    if concurrent <= 1:
        return None
    return MeasurementWarning(
        flag="shared_node",
        message=f"'{source}' measures the whole node, and {concurrent} experiments ran on it at the "
        "same time: the figure includes the others' share",
        value=concurrent,
        threshold=1,
        remedy="run node-wide meters with -n 0 (or -n 1), or measure GPUs per slot with nvml/zeus "
        "and --llem-gpus-per-worker",
    )


def worst_per_flag(warnings: list[MeasurementWarning]) -> list[MeasurementWarning]:
    """One warning per flag, the one with the largest numeric value: per-window warnings of
    an experiment (e.g. cpu_contention of each repeat) must not repeat a flag."""
    chosen: dict[str, MeasurementWarning] = {}
    for warning in warnings:
        kept = chosen.get(warning.flag)
        if kept is None or _magnitude(warning) > _magnitude(kept):
            chosen[warning.flag] = warning
    return list(chosen.values())


def _magnitude(warning: MeasurementWarning) -> float:
    return float(warning.value) if isinstance(warning.value, (int, float)) else float("-inf")
