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
from pytest_llem.models import ResolvedModel, resolve_model
from pytest_llem.results import MeasurementWarning

ENGINE_MODULES = {"transformers": ("torch", "transformers")}


@dataclass
class PreFlight:
    device: str
    devices: DeviceSet
    model: ResolvedModel | None
    warnings: list[MeasurementWarning] = field(default_factory=list)


def preflight_key(config: ExperimentConfig, check_model: bool) -> tuple[str, ...]:
    return (config.device, config.engine, config.model if check_model else "-", config.energy.meter)


def _check_device(backend: InferenceBackend, requested: str, problems: list[str]) -> str:
    import torch

    device = backend.resolve_device(requested)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            problems.append(
                f"device={requested!r} but CUDA is not available (torch {torch.__version__} is {built}); "
                "use device='cpu' or install a CUDA build of torch and an NVIDIA driver"
            )
        else:
            index = backend.gpu_indices(device)[0]
            if index >= torch.cuda.device_count():
                problems.append(
                    f"device={requested!r} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                    "pick an index below that or check CUDA_VISIBLE_DEVICES"
                )
    return device


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
        raise PreFlightError([f"engine {config.engine!r} needs {', '.join(missing)}: pip install {' '.join(missing)}"])
    device = _check_device(backend, config.device, problems)
    devices = DeviceSet(backend.gpu_indices(device))
    model = None
    if check_model:
        try:
            model = resolve_model(config.model)
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
