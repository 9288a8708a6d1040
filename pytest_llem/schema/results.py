"""Pydantic records of what an experiment measured and of a whole session's report.

Units are in field names (`_j`, `_s`, `_w`). The report is schema-versioned so readers can
refuse a file they do not understand instead of misreading it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pytest_llem.schema.comparison import ExperimentComparison
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.environment import EnvironmentSnapshot

SCHEMA_VERSION = 1

# the name of a registered meter (pytest_llem.schema.registry.METERS), third-party ones included;
# not validated against the registry, so a report stays readable where that meter is not installed
EnergySource = str
ExperimentStatus = Literal["passed", "failed", "error"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeasurementWarning(_Record):
    """A measurement-quality note: informational, never blocks a run."""

    flag: str
    message: str
    value: float | str | None = None
    threshold: float | str | None = None
    remedy: str


class PhaseEnergy(_Record):
    """The window split at the engine's steps into prefill and decode (docs/metrics.md,
    "Prefill and decode"). Sums over every window of the experiment. A phase's energy is null,
    with `*_null_reason`, where the meter cannot resolve it; times and tokens stay."""

    prefill_s: float
    prefill_input_tokens: int
    prefill_energy_j: float | None = None
    prefill_energy_per_input_token_j: float | None = None
    prefill_null_reason: str | None = None
    decode_s: float
    decode_output_tokens: int
    decode_energy_j: float | None = None
    decode_energy_per_output_token_j: float | None = None
    decode_null_reason: str | None = None


class SteadyState(_Record):
    """vLLM's steady state as ML.ENERGY defines it: in each pass over the requests, from when
    `max_num_seqs` requests have their first token to when `requests - max_num_seqs - 1` have
    finished (docs/metrics.md, "Steady state"). Sums over every pass of every window; null
    figures with `null_reason` where there is none or the meter cannot resolve it."""

    max_num_seqs: int
    requests: int  # per pass
    seconds: float | None = None
    output_tokens: int | None = None  # tokens generated inside the steady-state spans
    energy_j: float | None = None
    energy_per_output_token_j: float | None = None
    tokens_per_second: float | None = None
    average_power_w: float | None = None
    null_reason: str | None = None


class ValidityCheck(_Record):
    """One rule a publishable energy figure must pass, with the measured value it was judged on."""

    name: str
    value: float | str | None
    bound: str
    passed: bool
    rule: str  # what the rule is and where the field uses it (docs/metrics.md, "Validity")


class Validity(_Record):
    """Whether this experiment's energy figures can be published: "valid" (measured, every
    check passed), "invalid" (a check failed: the energy figures are null, the measured values
    are kept in the checks) or "estimated" (a model, never valid, whatever the checks say)."""

    status: Literal["valid", "invalid", "estimated"]
    checks: list[ValidityCheck] = Field(default_factory=list)

    @property
    def failed(self) -> list[ValidityCheck]:
        return [check for check in self.checks if not check.passed]


class EnergyInfo(_Record):
    """Where an energy figure came from and how much it can be trusted."""

    source: EnergySource
    measured: bool
    method: str = Field(description="e.g. 'counter delta', 'power integration', 'cpu-time model'")
    assumptions: dict[str, Any] = Field(default_factory=dict)
    per_device_j: dict[str, float] = Field(default_factory=dict)


class RepeatResult(_Record):
    """One measurement window."""

    index: int
    window_s: float
    output_tokens: int
    input_tokens: int
    energy_j: float | None
    per_device_j: dict[str, float] = Field(default_factory=dict)
    tokens_per_second: float
    energy_per_output_token_j: float | None
    energy_adjusted_j: float | None = None
    prefill_s: float | None = Field(None, description="mean time to first token of the window's requests")
    time_per_output_token_s: float | None = Field(None, description="mean TPOT of the window's requests")
    sample_count: int = 0
    reference_window_s: float | None = None
    reference_energy_j: float | None = None
    relative_time: float | None = Field(None, description="window_s / reference_window_s")
    relative_energy: float | None = Field(None, description="energy_j / reference_energy_j")


class Stats(_Record):
    """Spread of a metric across repeats; the interval is a two-sided 95% Student-t interval."""

    n: int
    mean: float
    std: float
    cv: float | None
    ci95_low: float | None
    ci95_high: float | None


class Percentiles(_Record):
    """A latency distribution over requests (linear interpolation between order statistics)."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float


class RequestLatency(_Record):
    """Per-request latency over every request of every repeat (definitions in the README).

    `scope` is "request" when each request's times are its own (vLLM, llama.cpp) and "batch"
    when they are the times of the static batch it ran in (transformers: prefill and token
    steps are shared by the batch; each sequence's end, at its EOS, is its own).
    """

    scope: Literal["request", "batch"]
    ttft_s: Percentiles | None = Field(None, description="time to first token")
    e2e_s: Percentiles | None = Field(None, description="end to end: submission to the last output token")
    tpot_s: Percentiles | None = Field(None, description="time per output token, (e2e - ttft) / (n - 1)")
    itl_s: Percentiles | None = Field(None, description="inter-token latency, gaps between tokens")


class ServedLoad(_Record):
    """A served engine's load and what it achieved, over every measured window (docs/served.md
    defines each field). Latency percentiles of the requests are in `latency`, as for every
    engine; this holds what only a load over HTTP has."""

    url: str
    server_started: bool = Field(description="True when the experiment started the server (server.command)")
    api: Literal["completions", "chat"]
    served_model: str
    request_rate: float | None = Field(
        description="requests/s of the arrival process; None = all at once (inf)"
    )
    burstiness: float
    concurrency: int = Field(description="the most requests in flight (n_prompts when unlimited)")
    requests: int = Field(description="measured requests, every window")
    failed_requests: int
    failures: list[str] = Field(default_factory=list, description="each distinct failure with its count")
    tokens_counted_by: str = Field(description="'server usage', 'tokenizer' (the server sent none) or both")
    output_length_mismatches: int = Field(
        description="answered requests whose output tokens differ from max_new_tokens (fixed_length)"
    )
    request_throughput_rps: float = Field(description="answered requests per second of window")
    e2e_s: Percentiles | None = Field(None, description="send to the last token chunk")
    client_queue_s: Percentiles | None = Field(
        None, description="wait on the client for a concurrency slot (not in TTFT)"
    )
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_e2e_ms: float | None = None
    good_requests: int | None = Field(None, description="requests that met every SLO set; None without SLOs")
    goodput_rps: float | None = Field(None, description="good requests per second of window")
    energy_per_good_request_j: float | None = None
    good_requests_per_kj: float | None = None
    client_cpu_s: float = Field(description="CPU seconds of the client's thread over the windows")
    client_cpu_share: float = Field(description="client CPU seconds / window seconds (1.0 = one core busy)")
    mean_running_requests: float | None = Field(
        None,
        description="the server's running requests (/metrics), mean over the steady state where it has one",
    )
    mean_running_basis: str | None = Field(None, description="'steady state' or 'window'")
    mean_kv_cache_usage: float | None = Field(
        None, description="the server's KV-cache use (0-1), mean over the windows"
    )
    metrics_note: str | None = Field(None, description="why /metrics gave nothing")


class WarmupResult(_Record):
    mode: Literal["fixed", "convergence"]
    iterations: int
    converged: bool
    final_cv: float | None
    target_cv: float | None
    max_prompts: int | None
    latencies_s: list[float]
    thermal_floor_s: float
    thermal_floor_waited_s: float
    thermal_floor_skipped_reason: str | None = None


class ThermalThrottle(_Record):
    detected: bool
    kinds: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    max_temperature_c: float | None = None


class FlopsResult(_Record):
    method: Literal["palm", "flop_counter"]
    confidence: Literal["high", "medium", "low"]
    non_embedding_parameters: int
    parameter_source: Literal["module", "config"] = Field(
        "module", description="counted from an nn.Module, or computed from the model config's shapes"
    )
    tokens_processed: int
    flops: float
    flops_per_output_token: float
    counted_flops: float | None = None
    notes: str = ""


class Emissions(_Record):
    """Grams CO2e of an experiment: its energy times a grid's carbon intensity (never measured)."""

    g_co2e_per_output_token: float
    g_co2e_per_window: float | None = Field(None, description="mean energy_j of a window, in grams CO2e")
    carbon_intensity_g_per_kwh: float
    intensity_source: str = Field(description="the user's figure, or CodeCarbon's offline country data")
    energy_basis: str = Field(description="which energy figure it is computed from, measured or estimated")


class SlotRecord(_Record):
    """Where an experiment ran under pytest-xdist, and beside how many others: figures that
    cannot be split per slot (RAPL, node power, the CPU estimate) are only as good as this."""

    worker: str = Field(description="the xdist worker id, e.g. 'gw1'")
    workers: int = Field(description="xdist workers in the session")
    cuda_visible_devices: str | None = Field(
        None, description="the worker's CUDA_VISIBLE_DEVICES; None when GPUs were not split"
    )
    gpu_indexes: list[int | None] = Field(default_factory=list, description="NVML indexes of the slot's GPUs")
    gpu_uuids: list[str | None] = Field(default_factory=list)
    cores: list[int] = Field(default_factory=list, description="the CPU cores the worker was pinned to")
    concurrent_experiments: int | None = Field(
        None, description="experiments that ran at the same time on the machine, this one included"
    )


class ExperimentResult(_Record):
    """The outcome of one experiment, as the report stores it and as `llem.run()` returns it."""

    nodeid: str
    status: ExperimentStatus
    error: str | None = None
    test_outcome: str | None = None
    config: ExperimentConfig
    config_hash: str
    model_source: str | None = None
    engine: str | None = None
    engine_version: str | None = None
    engine_settings: dict[str, Any] = Field(
        default_factory=dict, description="what the engine fixed at load time (threads, context, ...)"
    )
    device: str | None = None
    output_tokens: int = Field(
        0,
        description="output tokens of one pass over the prompts (n_prompts x max_new_tokens at fixed "
        "length), whatever the window's calibrated pass count; the window's own count is "
        "window_output_tokens, and per-token figures divide by the windows' tokens",
    )
    requested_output_tokens: int = Field(0, description="n_prompts x max_new_tokens: one pass, as asked")
    input_tokens: int = Field(0, description="prompt tokens of one pass over the prompts")
    window_output_tokens: int = Field(
        0, description="output tokens of the first window: output_tokens x window_passes at fixed length"
    )
    window_s: float = 0.0
    tokens_per_second: float = 0.0
    prefill_s: float | None = None
    time_per_output_token_s: float | None = None
    latency: RequestLatency | None = None
    energy_j: float | None = None
    energy_per_output_token_j: float | None = None
    baseline_power_w: float | None = None
    baseline_skipped_reason: str | None = Field(
        None, description="why no idle baseline was subtracted (off, or meaningless for the meter)"
    )
    energy_adjusted_j: float | None = None
    energy_adjusted_per_output_token_j: float | None = None
    # what the public leaderboards report beside J per output token, all over the same windows
    # (sums over every repeat; None where no energy was measured or a count is 0)
    energy_per_input_token_j: float | None = None  # energy / input (prompt) tokens
    energy_per_total_token_j: float | None = None  # energy / (input + output tokens)
    energy_per_request_j: float | None = None  # energy / requests (prompts generated for)
    average_power_w: float | None = None  # energy / window seconds
    output_tokens_per_joule: float | None = None  # output tokens / energy
    energy: EnergyInfo | None = None
    emissions: Emissions | None = None
    stats: dict[str, Stats] = Field(default_factory=dict)
    repeats: list[RepeatResult] = Field(default_factory=list)
    window_passes: int = Field(
        1, description="passes of the workload in each window, calibrated to reach min_window_s"
    )
    window_calibration: str | None = Field(
        None,
        description="what window_passes was decided from: the warmup's timed steps, or passes timed apart",
    )
    warmup: WarmupResult | None = None
    flops: FlopsResult | None = None
    thermal_throttle: ThermalThrottle | None = None
    timeseries_path: str | None = None
    warnings: list[MeasurementWarning] = Field(default_factory=list)
    validity: Validity | None = None
    phases: PhaseEnergy | None = None  # engine runs whose engine reports its steps
    steady_state: SteadyState | None = None  # engines that batch requests themselves (vLLM)
    served: ServedLoad | None = None  # the served engine's load (engines/served)
    fingerprint: str | None = Field(
        None,
        description="the machine this experiment ran on, kept by `llem merge` when the merged runs "
        "came from different machines (otherwise the report's own fingerprint applies)",
    )
    comparison: ExperimentComparison | None = None  # the gate's verdict, when the gate is on
    slot: SlotRecord | None = None  # under pytest-xdist: the worker's devices and the concurrency

    @property
    def warning_flags(self) -> list[str]:
        return [warning.flag for warning in self.warnings]

    @property
    def weights(self) -> str:
        """What the weights ran as: the engine's weight format where it ignores `dtype` (a GGUF
        file's quantisation under llama.cpp), else the configured dtype."""
        return str(self.engine_settings.get("weight_format") or self.config.dtype)

    @property
    def energy_label(self) -> str:
        """'measured' or 'estimated': how every output must present this result's energy."""
        return energy_label(self.energy)


def energy_label(energy: EnergyInfo | None) -> str:
    """'measured', 'estimated' or 'no energy': how every output must present an energy figure
    with this provenance."""
    if energy is None or energy.source == "none":
        return "no energy"
    return "measured" if energy.measured else "estimated"


class BenchmarkFigure(_Record):
    """A figure a benchmark measured about the tool itself (e.g. its overhead against a bare
    loop). Recorded in the report beside its target; never a pass/fail: a timing on a shared
    machine is evidence, not a test outcome."""

    nodeid: str
    name: str
    value: float
    unit: str = ""
    target: str | None = Field(None, description="e.g. '>= 0.97'; whether it was met is `target_met`")
    target_met: bool | None = None
    detail: str = ""


class GateRecord(_Record):
    """The session's gate as a whole, so the JSON report says what the terminal table and the
    PR comment say: its mode, what it compared against, the headline of verdicts, and in A/B
    mode the base's tests that the head no longer has (they have no experiment to carry a
    comparison, so without this list they would be in the table but not in the report)."""

    mode: Literal["ab", "stored"]
    reference: str = Field(description="the --llem-ab REF or the --llem-compare baseline report")
    base_commit: str | None = None
    headline: str = Field(description="e.g. '2 worse, 1 inconclusive, 9 unchanged'")
    missing: list[str] = Field(default_factory=list, description="A/B: base test ids not in the head")


class SessionReport(_Record):
    schema_version: int = SCHEMA_VERSION
    tool: str = "pytest-llem"
    tool_version: str
    created_at: str
    run_id: str | None = None
    name: str | None = Field(None, description="the --llem-save (or --llem-autosave commit) name")
    completed: bool | None = Field(
        None,
        description="false while the session runs and if it was interrupted; None in reports "
        "written before this was recorded",
    )
    fingerprint: str | None = None
    environment: EnvironmentSnapshot
    experiments: list[ExperimentResult] = Field(default_factory=list)
    figures: list[BenchmarkFigure] = Field(
        default_factory=list, description="figures benchmarks recorded with llem.record_figure()"
    )
    gate: GateRecord | None = Field(None, description="set when --llem-ab or --llem-compare gated the run")
    shard: str | None = Field(None, description="'I/N' when the session ran shard I of N (--llem-shard)")
    shard_balanced_by: str | None = Field(
        None, description="the earlier report whose test durations balanced the shards; None: by test id"
    )
    test_durations_s: dict[str, float] = Field(
        default_factory=dict,
        description="seconds each test took (setup, call and teardown), for balancing later shards",
    )
