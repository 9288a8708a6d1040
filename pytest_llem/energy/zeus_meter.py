"""The `zeus` meter: `zeus.monitor.ZeusMonitor` windows (optional extra `pytest-llem[zeus]`).

A monitor that finds neither a GPU nor a RAPL CPU is reported as unavailable, never as zero.
"""

from __future__ import annotations

import importlib
import itertools
from typing import Any

from pytest_llem.config import EnergyConfig
from pytest_llem.energy.base import DeviceSet, EnergyReading
from pytest_llem.errors import MeterUnavailable
from pytest_llem.results import EnergyInfo

_window_ids = itertools.count()


class ZeusMeter:
    name = "zeus"
    measured = True

    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor
        self._window = ""

    def start(self) -> None:
        self._window = f"llem-{next(_window_ids)}"
        self._monitor.begin_window(self._window)

    def stop(self) -> EnergyReading:
        measurement = self._monitor.end_window(self._window)
        per_device: dict[str, float] = {}
        for index, joules in (getattr(measurement, "gpu_energy", None) or {}).items():
            per_device[f"gpu{index}"] = float(joules)
        for index, joules in (getattr(measurement, "cpu_energy", None) or {}).items():
            per_device[f"cpu{index}"] = float(joules)
        for index, joules in (getattr(measurement, "dram_energy", None) or {}).items():
            per_device[f"dram{index}"] = float(joules)
        info = EnergyInfo(
            source="zeus",
            measured=True,
            method="ZeusMonitor window",
            assumptions={"zeus_window_time_s": float(getattr(measurement, "time", 0.0))},
            per_device_j=per_device,
        )
        return EnergyReading(energy_j=sum(per_device.values()), info=info)

    def close(self) -> None:
        pass


def create(config: EnergyConfig, devices: DeviceSet) -> ZeusMeter:
    try:
        monitor_module = importlib.import_module("zeus.monitor")
    except ImportError:
        raise MeterUnavailable(
            "zeus", "the zeus package is not installed", "pip install 'pytest-llem[zeus]'"
        ) from None
    # Same scope as the other meters: the GPUs in use for a GPU run (Zeus would otherwise add
    # every CPU package), the CPU packages (and DRAM) for a CPU run.
    scope = (
        {"gpu_indices": list(devices.gpu_indices), "cpu_indices": []}
        if devices.uses_gpu
        else {"gpu_indices": []}
    )
    try:
        monitor = monitor_module.ZeusMonitor(**scope)
    except Exception as exc:  # Zeus raises its own errors for missing NVML/RAPL
        raise MeterUnavailable(
            "zeus", f"ZeusMonitor could not start ({exc})", "check `python -m zeus.show_env`"
        ) from None
    if not (getattr(monitor, "gpu_indices", None) or getattr(monitor, "cpu_indices", None)):
        raise MeterUnavailable(
            "zeus",
            "Zeus found no GPU and no RAPL CPU to measure",
            "use --llem-energy=estimate on this machine",
        )
    return ZeusMeter(monitor)
