"""A simulated NVML with the pynvml surface that pytest-llem, Zeus and CodeCarbon use.

It behaves like a real board where it matters for measurement code: the energy counter is
the integral of the power trace in millijoules, updated every `counter_period_s` (~100 ms on
real GPUs); power can be a trailing average (`power_average_s`, 1 s on Ampere and later);
any query a `SimulatedGpu` does not model answers NOT_SUPPORTED; and faults happen on
demand: a counter reset (driver reload), query errors in a time interval, a lost device.
Time is a `pytest_llem.hardware.clock` clock (simulated by default), so every reading is exact.
It answers what real Zeus asks of NVML (architecture, `_nvmlGetFunctionPointer`, the
`NVML_ERROR_*` codes, `nvmlDeviceGetTemperatureV`) and counts every call per function.
Install it with `pytest_llem.testing.simulated_gpus(...)`, which puts it in sys.modules
as `pynvml` and rebinds NVML clients that imported `pynvml` earlier.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_llem.hardware.clock import Clock, SimulatedClock
from pytest_llem.testing.traces import Scaled, Trace, as_trace

# The codes and constants of nvml.h (the values nvidia-ml-py uses).
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_MEMORY = 20
NVML_ERROR_UNKNOWN = 999
NVML_TEMPERATURE_GPU = 0
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_ARCH_PASCAL = 4
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_AMPERE = 7
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_POWER_SCOPE_GPU = 0
NVML_POWER_SCOPE_MODULE = 1
NVML_POWER_SCOPE_MEMORY = 2

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(_MESSAGES.get(value, f"NVML error {value}"))


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclass
class SimulatedGpu:
    """One board. Traces are functions of simulated seconds; None means NOT_SUPPORTED."""

    name: str = "NVIDIA A100-SXM4-80GB"
    uuid: str = ""
    power_w: Trace | float | Callable[[float], float] | None = 300.0
    temperature_c: Trace | float | Callable[[float], float] | None = 55.0
    utilisation_pct: Trace | float | Callable[[float], float] | None = 90.0
    memory_used_mb: Trace | float | Callable[[float], float] | None = 20_000.0
    memory_total_mb: float | None = 81_920.0
    throttle_mask: Trace | float | Callable[[float], float] | None = 0
    power_limit_w: float | None = 400.0
    persistence_mode: bool | None = True
    energy_counter: bool = True  # Volta and later
    architecture: int | None = None  # NVML_DEVICE_ARCH_*; default: Ampere with a counter, else Pascal
    counter_period_s: float = 0.1
    counter_offset_mj: int = 123_456_789
    power_average_s: float = 0.0
    counter_reset_at_s: float | None = None
    counter_resets_at_s: tuple[float, ...] = ()  # more driver reloads: the counter restarts at 0 at each
    counter_jump: tuple[float, int] | None = None  # (time, mJ): a glitch adds mJ from then on
    query_errors: dict[str, tuple[float, float]] = field(default_factory=dict)
    lost_at_s: float | None = None
    # settings (power limit, locked clocks): False answers every set call NO_PERMISSION, as NVML
    # does for a process without root or CAP_SYS_ADMIN
    settable: bool = True
    power_limit_range_w: tuple[float, float] | None = (100.0, 400.0)
    max_clock_mhz: float = 1410.0
    locked_clock_mhz: float | None = None

    def __post_init__(self) -> None:
        self.power = as_trace(self.power_w)
        self.natural_power = self.power  # what the board draws unconstrained
        self.speed_steps: list[tuple[float, float]] = []  # (time, clock fraction) after each setting
        self.set_calls: list[tuple[str, float, float | None]] = []  # (call, time, value)
        self.temperature = as_trace(self.temperature_c)
        self.utilisation = as_trace(self.utilisation_pct)
        self.memory_used = as_trace(self.memory_used_mb)
        self.throttle = as_trace(self.throttle_mask)
        if self.architecture is None:
            self.architecture = NVML_DEVICE_ARCH_AMPERE if self.energy_counter else NVML_DEVICE_ARCH_PASCAL

    def speed(self, now: float) -> float:
        """The fraction of its full clock the board runs at now (1 unless a setting slows it)."""
        earlier = [x for t, x in self.speed_steps if t <= now]
        return earlier[-1] if earlier else 1.0  # the last setting made by now holds

    def apply_settings(self, now: float) -> None:
        """The effect of the power limit and locked clock from `now` on, by the usual DVFS
        model: dynamic power goes with the cube of the clock, speed with the clock. A limit
        below the board's unconstrained draw P lowers the clock to (limit / P) ** (1/3); a locked
        clock caps it at locked / max. Power is then P * x**3 and each token takes 1/x longer."""
        natural = self.natural_power.value(now) if self.natural_power is not None else None
        fraction = 1.0
        if natural and self.power_limit_w is not None and natural > self.power_limit_w:
            fraction = (self.power_limit_w / natural) ** (1.0 / 3.0)
        if self.locked_clock_mhz is not None:
            fraction = min(fraction, self.locked_clock_mhz / self.max_clock_mhz)
        self.speed_steps.append((now, fraction))
        if self.natural_power is not None:
            self.power = Scaled(self.natural_power, [(t, x**3) for t, x in self.speed_steps])


class SimulatedNvml:
    """The stand-in module. Unknown nvml* functions answer NOT_SUPPORTED, like a board
    that lacks the feature."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    __name__ = "pynvml"

    def __init__(
        self,
        gpus: list[SimulatedGpu],
        clock: Clock | None = None,
        driver_version: str = "550.54.15",
        log: list[tuple[str, float, Any]] | None = None,
    ) -> None:
        self.gpus = gpus
        for index, gpu in enumerate(gpus):
            if not gpu.uuid:
                gpu.uuid = f"GPU-00000000-0000-0000-0000-{index:012d}"
        self.clock: Clock = clock or SimulatedClock()
        self.driver_version = driver_version
        self.log = log if log is not None else []
        self.initialised = False
        self.energy_reads: dict[int, list[tuple[float, int]]] = {i: [] for i in range(len(gpus))}
        self.calls: Counter[tuple[str, int]] = Counter()  # (nvml function, device index) -> calls

    # -- helpers --------------------------------------------------------------------------
    def _gpu(self, handle: Any, query: str) -> tuple[int, SimulatedGpu, float]:
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        index = int(handle)
        gpu = self.gpus[index]
        now = self.clock.now()
        self.calls[(query, index)] += 1
        if gpu.lost_at_s is not None and now >= gpu.lost_at_s:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        window = gpu.query_errors.get(query)
        if window is not None and window[0] <= now < window[1]:
            raise NVMLError(NVML_ERROR_UNKNOWN)
        return index, gpu, now

    @staticmethod
    def _require(trace: Trace | None) -> Trace:
        if trace is None:
            raise NVMLError_NotSupported()
        return trace

    def energy_mj_at(self, index: int, now: float) -> int:
        """The counter value: integral of power since boot (or since the last reset)."""
        gpu = self.gpus[index]
        power = self._require(gpu.power)
        updated = (
            math.floor(now / gpu.counter_period_s) * gpu.counter_period_s if gpu.counter_period_s else now
        )
        jump = gpu.counter_jump[1] if gpu.counter_jump and updated >= gpu.counter_jump[0] else 0
        resets = [
            r for r in (gpu.counter_reset_at_s, *gpu.counter_resets_at_s) if r is not None and updated >= r
        ]
        if resets:
            return jump + int(power.integral(max(resets), updated) * 1000.0)
        return jump + gpu.counter_offset_mj + int(power.integral(0.0, updated) * 1000.0)

    def true_energy_j(self, index: int, t0: float, t1: float) -> float:
        return self._require(self.gpus[index].power).integral(t0, t1)

    # -- the pynvml surface -----------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == uuid:
                return index
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._gpu(handle, "index")[0]

    def nvmlDeviceGetArchitecture(self, handle: Any) -> int:
        gpu = self._gpu(handle, "architecture")[1]
        assert gpu.architecture is not None
        return gpu.architecture

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu(handle, "name")[1].name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._gpu(handle, "uuid")[1].uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        index, gpu, now = self._gpu(handle, "energy")
        if not gpu.energy_counter:
            raise NVMLError_NotSupported()
        value = self.energy_mj_at(index, now)
        self.energy_reads[index].append((now, value))
        self.log.append(("nvml.energy", now, index))
        return value

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        _, gpu, now = self._gpu(handle, "power")
        power = self._require(gpu.power)
        if gpu.power_average_s > 0:
            return int(power.mean(max(0.0, now - gpu.power_average_s), now) * 1000.0)
        return int(power.value(now) * 1000.0)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        _, gpu, now = self._gpu(handle, "temperature")
        return round(self._require(gpu.temperature).value(now))

    def nvmlDeviceGetTemperatureV(self, handle: Any, sensor: int) -> int:
        return self.nvmlDeviceGetTemperature(handle, sensor)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> _Utilization:
        _, gpu, now = self._gpu(handle, "utilisation")
        value = round(self._require(gpu.utilisation).value(now))
        return _Utilization(gpu=value, memory=value)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> _Memory:
        _, gpu, now = self._gpu(handle, "memory")
        if gpu.memory_total_mb is None:
            raise NVMLError_NotSupported()
        used = self._require(gpu.memory_used).value(now)
        total = int(gpu.memory_total_mb * 2**20)
        return _Memory(total=total, used=int(used * 2**20), free=total - int(used * 2**20))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        _, gpu, now = self._gpu(handle, "throttle")
        return int(self._require(gpu.throttle).value(now))

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        _, gpu, _ = self._gpu(handle, "power_limit")
        if gpu.power_limit_w is None:
            raise NVMLError_NotSupported()
        return int(gpu.power_limit_w * 1000)

    def _settable(self, handle: Any, call: str, value: float | None) -> tuple[SimulatedGpu, float]:
        _, gpu, now = self._gpu(handle, call)
        if not gpu.settable:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        gpu.set_calls.append((call, now, value))
        return gpu, now

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any) -> tuple[int, int]:
        _, gpu, _ = self._gpu(handle, "power_limit_constraints")
        if gpu.power_limit_range_w is None:
            raise NVMLError_NotSupported()
        low, high = gpu.power_limit_range_w
        return int(low * 1000), int(high * 1000)

    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit_mw: int) -> None:
        _, gpu, _ = self._gpu(handle, "set_power_limit")
        if gpu.power_limit_w is None or gpu.power_limit_range_w is None:
            raise NVMLError_NotSupported()
        if not gpu.settable:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        low, high = gpu.power_limit_range_w
        if not low * 1000 <= limit_mw <= high * 1000:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu, now = self._settable(handle, "set_power_limit", limit_mw / 1000.0)
        gpu.power_limit_w = limit_mw / 1000.0
        gpu.apply_settings(now)

    def nvmlDeviceSetGpuLockedClocks(self, handle: Any, min_mhz: int, max_mhz: int) -> None:
        gpu, now = self._settable(handle, "lock_clocks", float(max_mhz))
        if not 0 < min_mhz <= max_mhz <= gpu.max_clock_mhz:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu.locked_clock_mhz = float(max_mhz)
        gpu.apply_settings(now)

    def nvmlDeviceResetGpuLockedClocks(self, handle: Any) -> None:
        gpu, now = self._settable(handle, "reset_clocks", None)
        gpu.locked_clock_mhz = None
        gpu.apply_settings(now)

    def nvmlDeviceGetPersistenceMode(self, handle: Any) -> int:
        _, gpu, _ = self._gpu(handle, "persistence")
        if gpu.persistence_mode is None:
            raise NVMLError_NotSupported()
        return NVML_FEATURE_ENABLED if gpu.persistence_mode else NVML_FEATURE_DISABLED

    def _nvmlGetFunctionPointer(self, name: str) -> Any:
        """Present because Zeus refuses a `pynvml` without it (its test for the official bindings)."""
        function = getattr(type(self), name, None)
        if function is None:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        return function

    def __getattr__(self, name: str) -> Any:
        if name.startswith("NVML_") and name in globals():
            return globals()[name]
        if name.startswith("nvml"):

            def not_supported(*args: Any, **kwargs: Any) -> Any:
                raise NVMLError_NotSupported()

            return not_supported
        raise AttributeError(name)
