"""Pre-flight checks, run once per (device, engine, model, meter, dataset): collect every problem,
raise once, before any model loads."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field

from pytest_llem.datasets import check_dataset
from pytest_llem.energy import DeviceSet, select_meter
from pytest_llem.engines import ENGINES, InferenceBackend
from pytest_llem.engines.base import takes_load_pattern
from pytest_llem.engines.models import ResolvedModel, context_length
from pytest_llem.hardware import nvml_devices
from pytest_llem.hardware.gpu_settings import setting_problems
from pytest_llem.schema import quality
from pytest_llem.schema.config import ExperimentConfig, ServerConfig
from pytest_llem.schema.dataset_names import synthetic_length
from pytest_llem.schema.errors import (
    ConfigError,
    DeviceLost,
    MeterUnavailable,
    ModelUnavailable,
    PreFlightError,
)
from pytest_llem.schema.results import MeasurementWarning


@dataclass
class PreFlight:
    device: str
    devices: DeviceSet
    model: ResolvedModel | None
    warnings: list[MeasurementWarning] = field(default_factory=list)


def preflight_key(config: ExperimentConfig, check_model: bool) -> tuple[str, ...]:
    """What a pre-flight depends on. The model and the dataset are checked only for
    experiments that run prompts through a model (`check_model`), not for `measure()`."""
    gpu = f"{config.power_limit_w}|{config.gpu_clocks_mhz}"  # checked against the board's range
    if not check_model:
        return (config.device, config.engine, "-", config.energy.meter, "-", "-", gpu)
    dataset = (config.dataset, config.prompt_column or "")
    # what the engine's settings check reads (`settings_problems`): two configs that differ
    # only there must not share a pre-flight that passed for one of them
    settings = json.dumps(
        {
            "batch_size": config.batch_size,
            "count_flops": config.count_flops,
            "reference_model": config.reference_model,
            "passthrough_kwargs": config.passthrough_kwargs,
            "n_prompts": config.n_prompts,
            "load": [config.request_rate, config.burstiness, config.concurrency],
            "server": config.server.model_dump(mode="json"),
        },
        sort_keys=True,
    )
    return (config.device, config.engine, config.model, config.energy.meter, *dataset, settings, gpu)


def _persistence_warnings(devices: DeviceSet) -> list[MeasurementWarning]:
    if not devices.uses_gpu:
        return []
    session = nvml_devices.open_session()
    if session is None:
        return []
    return [
        quality.persistence_mode_off(device.label)
        for device in session.devices_for(list(devices.gpu_indices))
        if device.persistence_mode() is False
    ]


def context_problems(
    config: ExperimentConfig, model: ResolvedModel, longest_prompt: int | None = None
) -> list[str]:
    """A request longer than the model's positions: every engine fails it mid-run in its own
    words (transformers: "IndexError: index out of range in self"), so this names the two
    settings, the model's limit and the fix before anything generates. `longest_prompt`: the
    longest prompt's tokens once tokenised (at most `max_input_tokens`, which truncates);
    without it only a synthetic dataset's exact length is known (`synthetic:N`), and nothing
    else is judged yet."""
    found = context_length(model)
    if found is None:
        return []
    if longest_prompt is None:
        longest_prompt = synthetic_length(config.dataset)
        if longest_prompt is None:
            return []
    limit, source = found
    prompt = min(longest_prompt, config.max_input_tokens)
    longest = prompt + config.max_new_tokens
    if longest <= limit:
        return []
    room = limit - prompt
    fix = (
        f"lower max_new_tokens to at most {room} (or shorten the prompts: max_input_tokens)"
        if room > 0
        else f"lower max_input_tokens below {limit}, then max_new_tokens to fit"
    )
    return [
        f"the longest prompt ({prompt} tokens; max_input_tokens={config.max_input_tokens}) + "
        f"max_new_tokens={config.max_new_tokens} = {longest} positions, but model {config.model!r} "
        f"has {limit} ({source}); {fix}"
    ]


def served_only_problems(config: ExperimentConfig, backend: InferenceBackend) -> list[str]:
    """Load settings given to an engine that does not send requests over HTTP (they would be
    ignored without a word, and the result would claim a load that never ran)."""
    if takes_load_pattern(backend):
        return []
    given = [
        name
        for name, value, default in (
            ("request_rate", config.request_rate, None),
            ("burstiness", config.burstiness, 1.0),
            ("concurrency", config.concurrency, None),
        )
        if value != default
    ]
    if config.server != ServerConfig():
        given.append("server")
    if not given:
        return []
    return [
        f"{', '.join(given)} apply to a served model only (engine='openai'), not engine={config.engine!r}; "
        "remove them, or measure the model behind its server with engine='openai'"
    ]


def run_preflight(config: ExperimentConfig, backend: InferenceBackend, check_model: bool = True) -> PreFlight:
    problems: list[str] = []
    entry = ENGINES[config.engine]
    missing = [name for name in entry.requires if importlib.util.find_spec(name) is None]
    if missing:
        raise PreFlightError(
            [f"engine {config.engine!r} needs the module(s) {', '.join(missing)}: {entry.install}"]
        )
    problems.extend(backend.settings_problems(config))
    problems.extend(served_only_problems(config, backend))
    if config.reference_model and backend.exclusive:
        problems.append(
            f"reference_model={config.reference_model!r} needs two models loaded at once, but "
            f"engine={config.engine!r} keeps one (it reserves its memory up front); drop reference_model"
        )
    device = backend.resolve_device(config.device)
    problems.extend(backend.device_problems(config.device, device))
    devices = DeviceSet(backend.gpu_indices(device))
    model = None
    if check_model:
        try:  # read and validated in full here, so a bad line is found before any model loads
            check_dataset(config.dataset, config.prompt_column)
        except ConfigError as exc:
            problems.append(str(exc))
        try:
            model = backend.resolve_model(config.model)
        except ModelUnavailable as exc:
            problems.append(str(exc))
        except (OSError, ValueError) as exc:  # e.g. a path too long for the file system
            problems.append(f"model {config.model[:120]!r} cannot be resolved: {exc}")
        else:
            problems.extend(context_problems(config, model))
    if not problems and (config.power_limit_w is not None or config.gpu_clocks_mhz is not None):
        session = nvml_devices.open_session() if devices.uses_gpu else None
        boards = session.devices_for(list(devices.gpu_indices)) if session is not None else []
        try:
            problems.extend(setting_problems(boards, config.power_limit_w, config.gpu_clocks_mhz))
        except DeviceLost as exc:  # a board that fell off the bus: a pre-flight problem, not a crash
            problems.append(str(exc))
    if not problems:
        try:
            meter, _ = select_meter(config.energy, devices)
            meter.close()
        except MeterUnavailable as exc:
            problems.append(str(exc))
    if problems:
        raise PreFlightError(problems)
    try:
        persistence = _persistence_warnings(devices)
    except DeviceLost as exc:  # a GPU that fell off the bus is a pre-flight problem, not a crash
        raise PreFlightError([str(exc)]) from None
    return PreFlight(device, devices, model, persistence)
