"""The one place that talks to NVML (package `nvidia-ml-py`, module `pynvml`).

NVML error codes are mapped to outcomes here, once:

- NOT_SUPPORTED / FUNCTION_NOT_FOUND: the board lacks the feature; the query returns None and
  callers record the gap as a null;
- GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND: the device is gone; `DeviceLost` is raised,
  naming the device, so a dead GPU is never mistaken for a missing feature;
- anything else (UNKNOWN, TIMEOUT, ...): a failed read of a working device; the query returns
  None for that one read (callers that need the value, like an energy counter, then say so).

`pynvml` is imported on each `open_session()`, so the simulated NVML in
`pytest_llem.testing` is used whenever it has been installed into `sys.modules`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from pytest_llem.schema.errors import DeviceLost

T = TypeVar("T")

NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_GPU_NOT_FOUND = 28
LOST_CODES = {
    NVML_ERROR_GPU_IS_LOST: "NVML_ERROR_GPU_IS_LOST",
    NVML_ERROR_RESET_REQUIRED: "NVML_ERROR_RESET_REQUIRED",
    NVML_ERROR_GPU_NOT_FOUND: "NVML_ERROR_GPU_NOT_FOUND",
}

# NVML clock-event (throttle) reason bits, from nvml.h.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
BENIGN_THROTTLE_MASK = 0x1 | 0x2 | 0x100


def throttle_kinds(mask: int) -> list[str]:
    """Names of the performance-limiting reasons set in `mask` (idle and settings excluded)."""
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit and not bit & BENIGN_THROTTLE_MASK]


class SettingRefused(Exception):
    """NVML refused to change a device setting; `permission` when it said NO_PERMISSION."""

    def __init__(self, label: str, reason: str, permission: bool) -> None:
        super().__init__(f"{label}: {reason}")
        self.label = label
        self.reason = reason
        self.permission = permission


def _load_pynvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


@dataclass
class NvmlDevice:
    """One GPU as CUDA numbers it in this process, with NVML queries that never raise."""

    nvml: ModuleType
    handle: Any
    cuda_index: int
    nvml_index: int | None

    def _query(self, function: Callable[..., T], *args: Any) -> T | None:
        """Call an NVML device function; see the module docstring for the error mapping."""
        try:
            return function(self.handle, *args)
        except self.nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code in LOST_CODES:
                raise DeviceLost(self.label, f"{LOST_CODES[code]} from {function.__name__}") from None
            return None

    @property
    def label(self) -> str:
        return f"gpu{self.cuda_index}"

    def name(self) -> str | None:
        value = self._query(self.nvml.nvmlDeviceGetName)
        return value.decode() if isinstance(value, bytes) else value

    def uuid(self) -> str | None:
        value = self._query(self.nvml.nvmlDeviceGetUUID)
        return value.decode() if isinstance(value, bytes) else value

    def total_energy_mj(self) -> int | None:
        return self._query(self.nvml.nvmlDeviceGetTotalEnergyConsumption)

    def power_w(self) -> float | None:
        milliwatts = self._query(self.nvml.nvmlDeviceGetPowerUsage)
        return None if milliwatts is None else milliwatts / 1000.0

    def temperature_c(self) -> float | None:
        value = self._query(self.nvml.nvmlDeviceGetTemperature, self.nvml.NVML_TEMPERATURE_GPU)
        return None if value is None else float(value)

    def memory_used_total_mb(self) -> tuple[float | None, float | None]:
        info = self._query(self.nvml.nvmlDeviceGetMemoryInfo)
        if info is None:
            return None, None
        return info.used / 2**20, info.total / 2**20

    def memory_total_mb(self) -> float | None:
        return self.memory_used_total_mb()[1]

    def utilisation_pct(self) -> float | None:
        rates = self._query(self.nvml.nvmlDeviceGetUtilizationRates)
        return None if rates is None else float(rates.gpu)

    def throttle_mask(self) -> int | None:
        for function_name in (
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        ):
            function = getattr(self.nvml, function_name, None)
            if function is not None:
                value = self._query(function)
                if value is not None:
                    return int(value)
        return None

    def power_limit_w(self) -> float | None:
        milliwatts = self._query(self.nvml.nvmlDeviceGetPowerManagementLimit)
        return None if milliwatts is None else milliwatts / 1000.0

    def power_limit_range_w(self) -> tuple[float, float] | None:
        """The settable power-limit range in watts; None where the board does not say."""
        value = self._query(self.nvml.nvmlDeviceGetPowerManagementLimitConstraints)
        return None if value is None else (value[0] / 1000.0, value[1] / 1000.0)

    def _set(self, function: Callable[..., object], *args: Any) -> None:
        """Call an NVML set function: a lost device raises DeviceLost (as every query does),
        any other refusal SettingRefused, so the caller can name the setting and its fix."""
        try:
            function(self.handle, *args)
        except self.nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code in LOST_CODES:
                raise DeviceLost(self.label, f"{LOST_CODES[code]} from {function.__name__}") from None
            raise SettingRefused(self.label, str(exc), code == NVML_ERROR_NO_PERMISSION) from None

    def set_power_limit_w(self, watts: float) -> None:
        self._set(self.nvml.nvmlDeviceSetPowerManagementLimit, round(watts * 1000))

    def lock_clocks_mhz(self, mhz: int) -> None:
        self._set(self.nvml.nvmlDeviceSetGpuLockedClocks, mhz, mhz)

    def unlock_clocks(self) -> None:
        self._set(self.nvml.nvmlDeviceResetGpuLockedClocks)

    def persistence_mode(self) -> bool | None:
        value = self._query(self.nvml.nvmlDeviceGetPersistenceMode)
        return None if value is None else bool(value)


class NvmlSession:
    """An initialised NVML with the CUDA-visible devices mapped to handles."""

    def __init__(self, nvml: ModuleType) -> None:
        self.nvml = nvml

    def driver_version(self) -> str | None:
        try:
            value = self.nvml.nvmlSystemGetDriverVersion()
        except self.nvml.NVMLError:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def visible_devices(self) -> list[NvmlDevice]:
        """Devices in CUDA order, honouring CUDA_VISIBLE_DEVICES (indices or GPU-/MIG- UUIDs)."""
        count = self.nvml.nvmlDeviceGetCount()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            entries: list[str] = [str(i) for i in range(count)]
        else:
            entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
        devices: list[NvmlDevice] = []
        for cuda_index, entry in enumerate(entries):
            try:
                if entry.isdigit():
                    if int(entry) >= count:
                        break  # CUDA stops at the first invalid entry
                    handle = self.nvml.nvmlDeviceGetHandleByIndex(int(entry))
                    nvml_index: int | None = int(entry)
                else:
                    handle = self.nvml.nvmlDeviceGetHandleByUUID(entry)
                    nvml_index = None
            except self.nvml.NVMLError:
                break
            if nvml_index is None:  # a UUID entry: NVML still numbers the board
                try:
                    nvml_index = int(self.nvml.nvmlDeviceGetIndex(handle))
                except self.nvml.NVMLError:
                    nvml_index = None
            devices.append(NvmlDevice(self.nvml, handle, cuda_index, nvml_index))
        return devices

    def devices_for(self, cuda_indices: list[int]) -> list[NvmlDevice]:
        wanted = set(cuda_indices)
        return [device for device in self.visible_devices() if device.cuda_index in wanted]


def open_session() -> NvmlSession | None:
    """Initialise NVML, or None where the library or driver is absent."""
    nvml = _load_pynvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # pynvml raises NVMLError_LibraryNotFound and friends, or OSError
        return None
    return NvmlSession(nvml)
