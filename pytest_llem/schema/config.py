"""Pydantic models of one experiment's settings.

Marker keywords, `llem.run()` overrides, command-line options and ini values all become
one `ExperimentConfig` through `build_config`, so every source is validated the same way and
a bad value produces the same one-line `ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pytest_llem.schema.dataset_names import check_dataset_name, dataset_identity, synthetic_length
from pytest_llem.schema.errors import ConfigError
from pytest_llem.schema.limits import (
    INT64_MAX,
    MAX_BATCH_SIZE,
    MAX_BURSTINESS,
    MAX_CLOCK_MHZ,
    MAX_POWER_LIMIT_W,
    MAX_PROMPTS,
    MAX_REPEATS,
    MAX_REQUEST_RATE,
    MAX_SYNTHETIC_TOKENS,
    MAX_TEXT,
    MAX_THREADS,
    MAX_TOKENS,
    MAX_TTL_S,
    MAX_WAIT_S,
    MAX_WARMUP,
    MAX_WATTS_PER_CORE,
    json_problem,
    storable_text,
)
from pytest_llem.schema.registry import ENGINES, METERS


def _registered_meter(name: str) -> str:
    """`auto` or a meter in the meter registry (pytest_llem.schema.registry.METERS)."""
    if name != "auto" and name not in METERS:
        raise ValueError(f"unknown meter; registered: auto, {', '.join(METERS)}")
    return name


def _registered_engine(name: str) -> str:
    """An engine in the engine registry (pytest_llem.schema.registry.ENGINES)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine; registered: {', '.join(ENGINES)}")
    return name


MeterName = Annotated[str, AfterValidator(_registered_meter)]
EngineName = Annotated[str, AfterValidator(_registered_engine)]
DType = Literal["float32", "float16", "bfloat16"]
THERMAL_FLOOR_MIN_S = 30.0
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,4})$")

Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(storable_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class WarmupConfig(_Strict):
    """Warmup before the measurement window; its tokens never enter a metric."""

    n_warmup: int = Field(5, ge=0, le=MAX_WARMUP, description="fixed number of warmup generate calls")
    convergence: bool = Field(False, description="warm up until latency CV settles instead")
    cv_threshold: float = Field(0.05, gt=0, lt=1)
    cv_window: int = Field(5, ge=2, le=MAX_WARMUP)
    min_prompts: int = Field(5, ge=1, le=MAX_WARMUP)
    max_prompts: int = Field(20, ge=1, le=MAX_WARMUP)
    thermal_floor_s: float | None = Field(
        None,
        ge=0,
        le=MAX_WAIT_S,
        description="wait after warmup; None = device default (60 s on GPU, skipped on CPU)",
    )

    @field_validator("thermal_floor_s")
    @classmethod
    def _floor_minimum(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < THERMAL_FLOOR_MIN_S:
            raise ValueError(f"must be 0 (off) or at least {THERMAL_FLOOR_MIN_S:g} s when enabled")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> WarmupConfig:
        if self.min_prompts > self.max_prompts:
            raise ValueError("min_prompts must not exceed max_prompts")
        return self


class EnergyConfig(_Strict):
    """Which meter measures energy, and the settings that shape its figures."""

    meter: MeterName = "auto"
    watts_per_core: float = Field(
        10.0,
        gt=0,
        le=MAX_WATTS_PER_CORE,
        description="estimate meter: assumed watts drawn by one fully busy CPU core",
    )
    baseline_s: float | None = Field(
        None,
        ge=0,
        le=MAX_WAIT_S,
        description="idle baseline length; None = 30 s on GPU, 2 s otherwise (none for the estimate meter, which takes no baseline); 0 = off",
    )
    baseline_ttl_s: float = Field(600.0, gt=0, le=MAX_TTL_S)
    baseline_cache_path: Text | None = None
    sample_hz: float = Field(10.0, ge=0.1, le=100)
    sampler: bool = True
    min_valid_window_s: float | None = Field(
        None,
        ge=0,
        le=MAX_WAIT_S,
        description="validity: the shortest window whose energy is publishable; None = 10 x the "
        "meter's update period (1 s for NVML)",
    )


class ServerConfig(_Strict):
    """The served engine's server (`engine="openai"`): one that runs at `url`, or one the
    experiment starts with `command` (docs/served.md)."""

    url: Text | None = Field(
        None, description="base URL of a running OpenAI-compatible server, e.g. http://127.0.0.1:8000"
    )
    command: Text | None = Field(
        None,
        description="a server command the experiment starts and stops, with {port} (and {model}, {gguf}, "
        "{host}, {python}) filled in, e.g. '{python} -m vllm.entrypoints.openai.api_server --model {model} --port {port}'",
    )
    api: Literal["completions", "chat"] = "completions"
    served_model: Text | None = Field(
        None, description="the model name in requests; None = the first of GET /v1/models"
    )
    ready_timeout_s: float = Field(
        600.0, gt=0, le=MAX_WAIT_S, description="how long a started server may take to answer"
    )
    request_timeout_s: float = Field(
        600.0, gt=0, le=MAX_WAIT_S, description="the longest one streamed request may take"
    )
    metrics: bool = Field(True, description="scrape the server's Prometheus /metrics during each window")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class SloConfig(_Strict):
    """Latency targets: a request is good when it meets every one that is set (goodput)."""

    ttft_ms: float | None = Field(None, gt=0, description="time to first token, at most")
    tpot_ms: float | None = Field(None, gt=0, description="time per output token after the first, at most")
    e2e_ms: float | None = Field(None, gt=0, description="end-to-end latency, at most")


class ExperimentConfig(_Strict):
    """Everything that defines one experiment. Two equal configs give comparable results."""

    model: Text = Field("smollm2-135m", min_length=1)
    engine: EngineName = "transformers"
    device: str = "auto"
    dtype: DType = "float32"
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_prompts: int = Field(8, ge=1, le=MAX_PROMPTS)
    dataset: Text = Field(
        "builtin",
        description="builtin | synthetic:<tokens> | path to .jsonl/.csv/.parquet; a relative path "
        "given in a test resolves against the test file's directory",
    )
    prompt_column: Text | None = None
    max_input_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    max_new_tokens: int = Field(64, ge=1, le=MAX_TOKENS)
    fixed_length: bool = Field(True, description="min_new_tokens = max_new_tokens, so runs are comparable")
    seed: int = Field(0, ge=-INT64_MAX - 1, le=INT64_MAX)
    num_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=MAX_THREADS)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    repeats: int = Field(3, ge=1, le=MAX_REPEATS)
    min_window_s: float | None = Field(
        None,
        ge=0,
        le=MAX_WAIT_S,
        description="each window repeats the workload until it lasts at least this long (passes "
        "calibrated after warmup); None = 1 s on CPU, 5 s on a GPU; 0 = one pass per window",
    )
    power_limit_w: float | None = Field(
        None,
        gt=0,
        le=MAX_POWER_LIMIT_W,
        description="GPU power limit set through NVML for the experiment (after the idle baseline, "
        "before warmup) and restored after it; None leaves the board as it is",
    )
    gpu_clocks_mhz: int | None = Field(
        None,
        gt=0,
        le=MAX_CLOCK_MHZ,
        description="lock the GPU graphics clock at this frequency for the experiment, unlocked after it",
    )
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    request_rate: float | None = Field(
        None,
        gt=0,
        le=MAX_REQUEST_RATE,
        description="served engine: mean requests per second of the arrival process; None (or inf) = all at once",
    )
    burstiness: float = Field(
        1.0, gt=0, le=MAX_BURSTINESS, description="gamma shape of the gaps between arrivals: 1 = Poisson"
    )
    concurrency: int | None = Field(
        None, ge=1, le=MAX_PROMPTS, description="served engine: the most requests in flight; None = no limit"
    )
    slo: SloConfig = Field(default_factory=SloConfig)
    count_flops: bool = Field(False, description="also count FLOPs with torch.utils.flop_counter")
    reference_model: Text | None = Field(
        None,
        description="a model the change under test never touches; each repeat also runs it, adjacent in "
        "time, so relative_time/relative_energy cancel machine drift in the regression gate",
    )
    passthrough_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="merged last into from_pretrained; JSON values only"
    )

    @field_validator("passthrough_kwargs")
    @classmethod
    def _passthrough_is_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = json_problem(value, "passthrough_kwargs")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("request_rate", mode="before")
    @classmethod
    def _infinite_rate(cls, value: Any) -> Any:
        """`inf` (vLLM's and AIPerf's spelling of "all at once") is stored as None."""
        if isinstance(value, str) and value.strip().lower() in {"inf", "infinity"}:
            return None
        if isinstance(value, float) and value == float("inf"):
            return None
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        check_dataset_name(value)
        return value

    @model_validator(mode="after")
    def _synthetic_fits_in_memory(self) -> ExperimentConfig:
        length = synthetic_length(self.dataset)
        if length is not None and length * self.n_prompts > MAX_SYNTHETIC_TOKENS:
            raise ValueError(
                f"n_prompts={self.n_prompts} x synthetic length {length} = {length * self.n_prompts} "
                f"prompt tokens exceeds the limit of {MAX_SYNTHETIC_TOKENS}; use fewer or shorter prompts"
            )
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE_PATTERN.match(value):
            raise ValueError("must be one of auto, cpu, cuda, cuda:N")
        return value

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup_shorthand(cls, value: Any) -> Any:
        return {"n_warmup": value} if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("energy", mode="before")
    @classmethod
    def _energy_shorthand(cls, value: Any) -> Any:
        return {"meter": value} if isinstance(value, str) else value

    def config_hash(self) -> str:
        """Stable 16-hex digest of the full config: the identity used to match experiments.

        A file dataset enters by the sha256 of its bytes, not its path, so moving a checkout
        (or running on another machine) keeps runs comparable, and editing the file does not.
        """
        data = self.model_dump(mode="json")
        data["dataset"] = dataset_identity(self.dataset)
        # settings added after configs were first hashed enter only when set, so an experiment
        # that does not use them keeps the hash its stored baselines have
        defaults = ExperimentConfig.model_construct().model_dump(mode="json", include=set(HASHED_WHEN_SET))
        for name in HASHED_WHEN_SET:
            if data[name] == defaults[name]:
                del data[name]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


HASHED_WHEN_SET = ("server", "request_rate", "burstiness", "concurrency", "slo")
"""The served engine's settings (docs/served.md): part of `config_hash` only when not at their
defaults."""


def _describe(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "config"


def _allowed(field_path: tuple[int | str, ...]) -> str:
    model: type[BaseModel] = ExperimentConfig
    for part in field_path[:-1]:
        annotation = model.model_fields.get(str(part))
        nested = getattr(annotation, "annotation", None) if annotation else None
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            model = nested
    return ", ".join(model.model_fields)


def shown(value: Any, limit: int = 120) -> str:
    """repr() for a one-line message: never raises, never spans lines, never floods a terminal."""
    try:
        text = repr(value)
    except Exception:  # a user's object with a broken __repr__ still gets a message
        text = f"<{type(value).__name__} object>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: field, value, what is wrong/allowed, and where the value came from."""
    parts = []
    for item in error.errors():
        field = _describe(item["loc"])
        if item["type"] == "extra_forbidden":
            parts.append(
                f"unknown key '{field}' (value {shown(item['input'])}); allowed keys: {_allowed(item['loc'])}"
            )
        else:
            message = item["msg"].replace("\n", " ").removeprefix("Value error, ")
            if item["loc"]:
                parts.append(f"{field}={shown(item['input'])} is invalid: {message}")
            else:  # a rule across fields: the message names them
                parts.append(message)
    return f"llem config from {source}: " + "; ".join(parts)


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`; nested sections (energy, warmup) merge field by field."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _normalise_layer(layer: Mapping[str, Any]) -> dict[str, Any]:
    """Expand the `energy="nvml"` and `warmup=3` shorthands so layers merge field by field."""
    out = dict(layer)
    if isinstance(out.get("energy"), str):
        out["energy"] = {"meter": out["energy"]}
    if isinstance(out.get("warmup"), int) and not isinstance(out.get("warmup"), bool):
        out["warmup"] = {"n_warmup": out["warmup"]}
    return out


def build_config(*layers: tuple[str, Mapping[str, Any]]) -> ExperimentConfig:
    """Merge (source, values) layers, lowest precedence first, and validate once.

    Each layer is validated on its own first so the error names the source that holds the
    bad value (marker, llem.run(), --llem-* option), then the merge is validated.
    """
    merged: dict[str, Any] = {}
    for source, values in layers:
        layer = _normalise_layer(values)
        try:
            ExperimentConfig.model_validate(deep_merge({}, layer))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None
        merged = deep_merge(merged, layer)
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "merged settings")) from None
