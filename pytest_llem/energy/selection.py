"""Meter registry and `auto` selection. Adding a meter: one module, one line in METERS."""

from __future__ import annotations

from collections.abc import Callable

from pytest_llem import warnings as quality
from pytest_llem.config import EnergyConfig
from pytest_llem.energy import codecarbon_meter, estimate, nvml, rapl, zeus_meter
from pytest_llem.energy.base import DeviceSet, EnergyMeter
from pytest_llem.errors import MeterUnavailable
from pytest_llem.results import MeasurementWarning

MeterFactory = Callable[[EnergyConfig, DeviceSet], EnergyMeter]

METERS: dict[str, MeterFactory] = {
    "zeus": zeus_meter.create,
    "nvml": nvml.create,
    "rapl": rapl.create,
    "codecarbon": codecarbon_meter.create,
    "estimate": estimate.create_estimate,
    "none": estimate.create_none,
}


def auto_candidates(devices: DeviceSet) -> list[str]:
    """zeus > nvml for GPU runs; zeus > rapl for CPU runs (RAPL does not see a GPU)."""
    return ["zeus", "nvml"] if devices.uses_gpu else ["zeus", "rapl"]


def select_meter(config: EnergyConfig, devices: DeviceSet) -> tuple[EnergyMeter, list[MeasurementWarning]]:
    """The meter to use, plus the warning `auto` owes the user when it had to estimate.

    An explicitly named meter that is unavailable raises `MeterUnavailable`.
    """
    if config.meter != "auto":
        return METERS[config.meter](config, devices), []
    reasons: list[str] = []
    for name in auto_candidates(devices):
        try:
            return METERS[name](config, devices), []
        except MeterUnavailable as exc:
            reasons.append(f"{name}: {exc.reason}")
    fallback = METERS["estimate"](config, devices)
    return fallback, [
        quality.energy_estimated("estimate", "no energy sensor found (" + "; ".join(reasons) + ")")
    ]
