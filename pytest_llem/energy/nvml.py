"""The `nvml` meter: GPU energy from NVML, per device in use.

Volta and later expose a millijoule counter (`nvmlDeviceGetTotalEnergyConsumption`) that is
exact to its ~100 ms update period; the window's energy is its delta. Older boards, and any
device whose counter goes backwards mid-window (driver reload), fall back to trapezoidal
integration of polled power, with a warning. Polled power is a 1 s average on Ampere and
later, so it is a fallback, never the first choice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pytest_llem import nvml_devices
from pytest_llem import warnings as quality
from pytest_llem.config import EnergyConfig
from pytest_llem.energy.base import DeviceSet, EnergyReading, Poller, trapezoid_energy_j
from pytest_llem.errors import MeterUnavailable
from pytest_llem.results import EnergyInfo, MeasurementWarning


@dataclass
class _DeviceWindow:
    device: nvml_devices.NvmlDevice
    has_counter: bool
    counter_start_mj: int | None = None
    counter_last_mj: int | None = None
    counter_reset: bool = False
    power_samples: list[tuple[float, float]] = field(default_factory=list)


class NvmlMeter:
    name = "nvml"
    measured = True

    def __init__(self, devices: list[nvml_devices.NvmlDevice], sample_hz: float) -> None:
        self._windows = [_DeviceWindow(d, has_counter=d.total_energy_mj() is not None) for d in devices]
        self._interval_s = 1.0 / sample_hz
        self._lock = threading.Lock()
        self._poller: Poller | None = None
        self._start_s = 0.0

    def _poll(self) -> None:
        now = time.perf_counter()
        with self._lock:
            for window in self._windows:
                power = window.device.power_w()
                if power is not None:
                    window.power_samples.append((now, power))
                if window.has_counter and not window.counter_reset:
                    counter = window.device.total_energy_mj()
                    if counter is None:
                        continue
                    if window.counter_last_mj is not None and counter < window.counter_last_mj:
                        window.counter_reset = True
                    window.counter_last_mj = counter

    def start(self) -> None:
        self._start_s = time.perf_counter()
        for window in self._windows:
            window.power_samples.clear()
            window.counter_reset = False
            window.counter_start_mj = window.device.total_energy_mj() if window.has_counter else None
            window.counter_last_mj = window.counter_start_mj
        self._poller = Poller(self._interval_s, self._poll, "llem-nvml-meter")
        self._poller.start()

    def stop(self) -> EnergyReading:
        end_s = time.perf_counter()
        counters_end = {id(w): w.device.total_energy_mj() if w.has_counter else None for w in self._windows}
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        self._poll()
        per_device: dict[str, float] = {}
        methods: dict[str, str] = {}
        warnings: list[MeasurementWarning] = []
        for window in self._windows:
            label = window.device.label
            counter_end = counters_end[id(window)]
            usable_counter = (
                window.counter_start_mj is not None
                and counter_end is not None
                and not window.counter_reset
                and counter_end >= window.counter_start_mj
            )
            if usable_counter:
                assert window.counter_start_mj is not None and counter_end is not None
                per_device[label] = (counter_end - window.counter_start_mj) / 1000.0
                methods[label] = "counter delta"
                continue
            if window.counter_reset:
                warnings.append(quality.energy_counter_reset(label, "power integration"))
            elif window.has_counter:
                warnings.append(quality.energy_counter_unreadable(label, "power integration"))
            try:
                per_device[label] = trapezoid_energy_j(window.power_samples, self._start_s, end_s)
            except ValueError:
                raise MeterUnavailable(
                    "nvml",
                    f"{label} gave neither an energy counter nor any power sample in the window",
                    "check `nvidia-smi -q -d POWER`; use --llem-energy=zeus or estimate",
                ) from None
            methods[label] = "power integration"
        info = EnergyInfo(
            source="nvml",
            measured=True,
            method=", ".join(sorted(set(methods.values()))),
            assumptions={"per_device_method": methods, "sample_hz": 1.0 / self._interval_s},
            per_device_j=per_device,
        )
        return EnergyReading(energy_j=sum(per_device.values()), info=info, warnings=warnings)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None


def create(config: EnergyConfig, devices: DeviceSet) -> NvmlMeter:
    if not devices.uses_gpu:
        raise MeterUnavailable("nvml", "the experiment runs on no GPU", "use rapl or estimate for CPU runs")
    session = nvml_devices.open_session()
    if session is None:
        raise MeterUnavailable(
            "nvml",
            "NVML could not be loaded or initialised",
            "pip install nvidia-ml-py and install the NVIDIA driver (nvidia-smi must work)",
        )
    found = session.devices_for(list(devices.gpu_indices))
    missing = set(devices.gpu_indices) - {d.cuda_index for d in found}
    if missing:
        raise MeterUnavailable(
            "nvml",
            f"CUDA device(s) {sorted(missing)} are not visible to NVML",
            "check CUDA_VISIBLE_DEVICES and the device setting",
        )
    for device in found:
        if device.total_energy_mj() is None and device.power_w() is None:
            raise MeterUnavailable(
                "nvml",
                f"{device.label} answers NOT_SUPPORTED for both energy and power",
                "use --llem-energy=estimate on this board",
            )
    return NvmlMeter(found, config.sample_hz)
