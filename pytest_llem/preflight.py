"""Pre-flight checks, run once per (device, engine, model, meter): collect every problem, raise once."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from pytest_llem import nvml_devices
from pytest_llem import warnings as quality
from pytest_llem.config import ExperimentConfig
from pytest_llem.energy import DeviceSet, select_meter
from pytest_llem.engines import InferenceBackend
from pytest_llem.errors import MeterUnavailable, ModelUnavailable, PreFlightError
from pytest_llem.models import ResolvedModel
from pytest_llem.results import MeasurementWarning

ENGINE_MODULES = {"transformers": ("torch", "transformers"), "simulated": ("torch",)}


@dataclass
class PreFlight:
    device: str
    devices: DeviceSet
    model: ResolvedModel | None
    warnings: list[MeasurementWarning] = field(default_factory=list)


def preflight_key(config: ExperimentConfig, check_model: bool) -> tuple[str, ...]:
    return (config.device, config.engine, config.model if check_model else "-", config.energy.meter)


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


def run_preflight(config: ExperimentConfig, backend: InferenceBackend, check_model: bool = True) -> PreFlight:
    problems: list[str] = []
    missing = [name for name in ENGINE_MODULES[config.engine] if importlib.util.find_spec(name) is None]
    if missing:
        raise PreFlightError(
            [f"engine {config.engine!r} needs {', '.join(missing)}: pip install {' '.join(missing)}"]
        )
    device = backend.resolve_device(config.device)
    problems.extend(backend.device_problems(config.device, device))
    devices = DeviceSet(backend.gpu_indices(device))
    model = None
    if check_model:
        try:
            model = backend.resolve_model(config.model)
        except ModelUnavailable as exc:
            problems.append(str(exc))
    if not problems:
        try:
            meter, _ = select_meter(config.energy, devices)
            meter.close()
        except MeterUnavailable as exc:
            problems.append(str(exc))
    if problems:
        raise PreFlightError(problems)
    return PreFlight(device, devices, model, _persistence_warnings(devices))
