"""The `codecarbon` meter: CodeCarbon's OfflineEmissionsTracker (optional extra).

Only the offline tracker is used: the online one contacts geolocation and cloud-metadata
hosts. CodeCarbon models what it cannot read (RAM always; CPUs without RAPL from TDP), so a
figure is labelled measured only when every component it summed came from a counter.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from typing import Any

from pytest_llem.energy.base import DeviceSet, EnergyReading
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.errors import MeasurementError, MeterUnavailable
from pytest_llem.schema.results import EnergyInfo

KWH_TO_J = 3.6e6
_COUNTER_CPU_MODES = {"intel_rapl", "intel_power_gadget", "apple_powermetrics"}


class CodeCarbonMeter:
    name = "codecarbon"
    measured = False

    def __init__(self, tracker_class: Any) -> None:
        self._tracker_class = tracker_class
        self._tracker: Any = None
        self._last: Any = None

    def new_tracker(self) -> Any:
        with warnings.catch_warnings():  # CodeCarbon 3 deprecates save_to_file; 2.x lacks its successor
            warnings.simplefilter("ignore", DeprecationWarning)
            return self._tracker_class(
                country_iso_code="USA", save_to_file=False, log_level="error", measure_power_secs=1
            )

    def start(self) -> None:
        self.close()
        self._tracker = self.new_tracker()
        self._tracker.start()

    def _cpu_read_counter(self) -> bool:
        hardware = getattr(self._last, "_hardware", []) or []
        cpu_modes = [getattr(h, "_mode", None) for h in hardware if type(h).__name__ == "CPU"]
        return bool(cpu_modes) and all(mode in _COUNTER_CPU_MODES for mode in cpu_modes)

    def stop(self) -> EnergyReading:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            raise MeasurementError("the codecarbon meter was stopped without an open window")
        tracker.stop()
        self._last = tracker
        data = tracker.final_emissions_data
        parts_kwh = {
            "cpu": float(getattr(data, "cpu_energy", 0.0) or 0.0),
            "gpu": float(getattr(data, "gpu_energy", 0.0) or 0.0),
            "ram": float(getattr(data, "ram_energy", 0.0) or 0.0),
        }
        cpu_counter = self._cpu_read_counter()
        measured = cpu_counter and parts_kwh["ram"] == 0.0
        info = EnergyInfo(
            source="codecarbon",
            measured=measured,
            method="OfflineEmissionsTracker",
            assumptions={
                "cpu_from_counter": cpu_counter,
                "ram_modelled": parts_kwh["ram"] > 0,
                "note": "CodeCarbon models RAM power and, without RAPL, CPU power from TDP",
            },
            per_device_j={name: kwh * KWH_TO_J for name, kwh in parts_kwh.items()},
        )
        return EnergyReading(energy_j=sum(parts_kwh.values()) * KWH_TO_J, info=info)

    def close(self) -> None:
        """Stop a tracker left running by an error path (CodeCarbon polls on its own thread)."""
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            with contextlib.suppress(Exception):  # the error path already has its error
                tracker.stop()


def create(config: EnergyConfig, devices: DeviceSet) -> CodeCarbonMeter:
    try:
        module = importlib.import_module("codecarbon")
    except ImportError:
        raise MeterUnavailable(
            "codecarbon", "the codecarbon package is not installed", "pip install 'pytest-llem[codecarbon]'"
        ) from None
    meter = CodeCarbonMeter(module.OfflineEmissionsTracker)
    try:  # probe now: a tracker that cannot be built here makes the meter unavailable
        meter.new_tracker()
    except Exception as exc:
        raise MeterUnavailable(
            "codecarbon",
            f"OfflineEmissionsTracker could not start ({type(exc).__name__}: {exc})",
            "check CodeCarbon's configuration (.codecarbon.config) or use another meter",
        ) from None
    return meter
