"""`auto` selection over the meter registry. Adding a meter: one module, one line in
`pytest_llem.schema.registry.METERS` (or an entry point in the `pytest_llem.meters` group)."""

from __future__ import annotations

from collections.abc import Callable

from pytest_llem.energy.base import DeviceSet, EnergyMeter
from pytest_llem.schema import quality
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.errors import MeterUnavailable
from pytest_llem.schema.registry import METERS
from pytest_llem.schema.results import MeasurementWarning

MeterFactory = Callable[[EnergyConfig, DeviceSet], EnergyMeter]


def create_meter(name: str, config: EnergyConfig, devices: DeviceSet) -> EnergyMeter:
    """The meter registered as `name`, created for these devices (may raise `MeterUnavailable`)."""
    factory: MeterFactory = METERS.load(name)
    return factory(config, devices)


def auto_candidates(devices: DeviceSet) -> list[str]:
    """zeus > nvml for GPU runs; zeus > rapl for CPU runs (RAPL does not see a GPU)."""
    return ["zeus", "nvml"] if devices.uses_gpu else ["zeus", "rapl"]


def select_meter(config: EnergyConfig, devices: DeviceSet) -> tuple[EnergyMeter, list[MeasurementWarning]]:
    """The meter to use, plus the warning `auto` owes the user when it had to estimate.

    An explicitly named meter that is unavailable raises `MeterUnavailable`.
    """
    if config.meter != "auto":
        return create_meter(config.meter, config, devices), []
    reasons: list[str] = []
    for name in auto_candidates(devices):
        try:
            return create_meter(name, config, devices), []
        except MeterUnavailable as exc:
            reasons.append(f"{name}: {exc.reason}")
    fallback = create_meter("estimate", config, devices)
    return fallback, [
        quality.energy_estimated("estimate", "no energy sensor found (" + "; ".join(reasons) + ")")
    ]
