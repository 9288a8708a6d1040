"""The `nvml` meter: GPU energy from NVML, per device in use.

Volta and later expose a millijoule counter (`nvmlDeviceGetTotalEnergyConsumption`) that is
exact to its ~100 ms update period; the window's energy is its delta. The meter's
`DevicePoller` (shared with the timeseries) also reads the counter on every tick, so a counter
that goes backwards mid-window (driver reload) is seen even when the end value happens to
exceed the start; such a window, and one whose counter could not be read, falls back to
trapezoidal integration of the polled power, with a warning. Boards without a counter use
that integration always, with a `power_integration` warning: polled power is a 1 s average on
Ampere and later, so it is a fallback, never the first choice. A device lost mid-window is a
`MeasurementError`, never a figure.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pytest_llem.energy.base import DeviceSet, EnergyReading, trapezoid_energy_j
from pytest_llem.hardware import clock as clocks
from pytest_llem.hardware import nvml_devices
from pytest_llem.hardware.sampler import DevicePoller, Sample
from pytest_llem.schema import quality
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.errors import DeviceLost, MeasurementError, MeterUnavailable
from pytest_llem.schema.results import EnergyInfo, MeasurementWarning

POWER_INTEGRATION = "power integration"
PLAUSIBLE_MARGIN = 1.10  # a board may briefly exceed its limit; 10% over it for a window is not physical


def implausible_delta(
    label: str, joules: float, window_s: float, went_backwards: bool, limit_w: float | None, fallback: str
) -> MeasurementWarning | None:
    """Why a counter delta cannot be right (a reset, a negative value, more than the power
    limit allows over the window), as the warning that goes with the fallback; None if fine."""
    if went_backwards or not joules >= 0:
        return quality.energy_counter_reset(label, f"{fallback} (the counter delta was {joules:.1f} J)")
    if limit_w is not None and joules > limit_w * PLAUSIBLE_MARGIN * window_s + 1.0:
        return quality.energy_delta_implausible(label, joules, limit_w * window_s, fallback)
    return None


@dataclass
class CounterWindow:
    """One device's counter over a window: its reads at the window's ends and on each tick."""

    start_mj: int | None
    end_mj: int | None
    ticks_mj: list[int]

    @property
    def went_backwards(self) -> bool:
        reads = [r for r in (self.start_mj, *self.ticks_mj, self.end_mj) if r is not None]
        return any(b < a for a, b in itertools.pairwise(reads))

    @property
    def delta_j(self) -> float | None:
        if self.start_mj is None or self.end_mj is None:
            return None
        return (self.end_mj - self.start_mj) / 1000.0


def counter_windows(
    devices: list[nvml_devices.NvmlDevice],
    start_mj: dict[str, int | None],
    end_mj: dict[str, int | None],
    samples: list[Sample],
) -> dict[str, CounterWindow]:
    ticks: dict[int, list[int]] = {}
    for sample in samples:
        if sample.energy_mj is not None:
            ticks.setdefault(sample.gpu_index, []).append(sample.energy_mj)
    return {
        d.label: CounterWindow(start_mj.get(d.label), end_mj.get(d.label), ticks.get(d.cuda_index, []))
        for d in devices
    }


def integrate_power(
    device: nvml_devices.NvmlDevice, samples: list[Sample], start_s: float, end_s: float
) -> float:
    """Trapezoidal energy of one device's polled power over [start_s, end_s]."""
    points = [
        (s.time_s, s.power_w) for s in samples if s.gpu_index == device.cuda_index and s.power_w is not None
    ]
    try:
        return trapezoid_energy_j(points, start_s, end_s)
    except ValueError:
        raise MeasurementError(
            f"{device.label} gave neither a usable energy counter nor any power sample in the window; "
            "check `nvidia-smi -q -d POWER` and repeat the experiment"
        ) from None


@dataclass(frozen=True)
class DeviceEnergy:
    """One GPU's energy over a window, how it was obtained, and why not the counter if not."""

    joules: float
    method: str
    warning: MeasurementWarning | None = None


def counter_or_integrated(
    device: nvml_devices.NvmlDevice,
    counter_j: float | None,
    counter_method: str,
    went_backwards: bool,
    limit_w: float | None,
    samples: list[Sample],
    start_s: float,
    end_s: float,
) -> DeviceEnergy:
    """The counter's delta (`counter_method`: NVML's own, or Zeus's window over it) unless it is
    implausible (a reset, negative, beyond the power limit), else the polled power integrated
    over the window, with the warning that says why. The one rule for every NVML-based meter;
    a device whose counter could not be read at all (`counter_j` None) is integrated too."""
    if counter_j is not None:
        problem = implausible_delta(
            device.label, counter_j, end_s - start_s, went_backwards, limit_w, POWER_INTEGRATION
        )
        if problem is None:
            return DeviceEnergy(counter_j, counter_method)
    else:
        problem = quality.energy_counter_unreadable(device.label, POWER_INTEGRATION)
    return DeviceEnergy(integrate_power(device, samples, start_s, end_s), POWER_INTEGRATION, problem)


# The counter's resolution, probed once per meter (at its creation, before any window): a few
# reads a millisecond apart, a few milliseconds in all.
STEP_PROBE_READS = 3
STEP_PROBE_INTERVAL_S = 0.001


def counter_step_s(device: nvml_devices.NvmlDevice) -> float | None:
    """How far a read of the board's energy counter can lag the energy behind it, where that is
    known: when each of `STEP_PROBE_READS` reads a millisecond apart moved, the counter follows
    the energy to within the longest gap between them. None when one did not move: the counter
    moves in coarser steps (NVML documents no period; ~100 ms is common) or the board drew no
    power, and the `counter_matches_power` check then allows the common 100 ms."""
    clock = clocks.current()
    last, last_s = device.total_energy_mj(), clock.now()
    gaps: list[float] = []
    for _ in range(STEP_PROBE_READS):
        clock.sleep(STEP_PROBE_INTERVAL_S)
        value, now = device.total_energy_mj(), clock.now()
        if value is None or value == last:
            return None
        gaps.append(now - last_s)
        last, last_s = value, now
    return max(gaps)


def read_counters(
    devices: list[nvml_devices.NvmlDevice], with_counter: frozenset[str]
) -> dict[str, int | None]:
    return {d.label: d.total_energy_mj() if d.label in with_counter else None for d in devices}


class NvmlMeter:
    name = "nvml"
    measured = True

    def __init__(
        self, devices: list[nvml_devices.NvmlDevice], sample_hz: float, timeseries: bool = True
    ) -> None:
        self._devices = devices
        self._with_counter = frozenset(d.label for d in devices if d.total_energy_mj() is not None)
        self._limits_w = {d.label: d.power_limit_w() for d in devices}
        self._step_s = {d.label: counter_step_s(d) for d in devices if d.label in self._with_counter}
        self.poller = DevicePoller(devices, sample_hz, timeseries=timeseries, counters=self._with_counter)
        self._start_mj: dict[str, int | None] = {}
        self._start_s = 0.0

    def start(self) -> None:
        try:
            self._start_mj = read_counters(self._devices, self._with_counter)
        except DeviceLost as exc:
            raise MeasurementError(str(exc)) from exc
        self._start_s = clocks.current().now()
        self.poller.start()

    def read_j(self) -> float | None:
        """The counters' deltas since `start()`; None when a board has no counter (its energy
        is integrated from polled power, which is not exact at an instant) or is lost."""
        if len(self._with_counter) < len(self._devices):
            return None
        try:
            now = read_counters(self._devices, self._with_counter)
        except DeviceLost:
            return None
        total_mj = 0
        for label, start_mj in self._start_mj.items():
            end_mj = now.get(label)
            if start_mj is None or end_mj is None:
                return None
            total_mj += end_mj - start_mj
        return total_mj / 1000.0

    def stop(self) -> EnergyReading:
        try:
            samples = self.poller.stop()  # first, so every tick's counter read precedes the end read
            end_s = clocks.current().now()
            end_mj = read_counters(self._devices, self._with_counter)
        except DeviceLost as exc:
            self.poller.close()
            raise MeasurementError(str(exc)) from exc
        counters = counter_windows(self._devices, self._start_mj, end_mj, samples)
        per_device: dict[str, float] = {}
        methods: dict[str, str] = {}
        warnings: list[MeasurementWarning] = []
        for device in self._devices:
            label = device.label
            if label not in self._with_counter:  # older than Volta: power is all there is
                warnings.append(quality.power_integration(label, self.poller.sample_hz))
                per_device[label] = integrate_power(device, samples, self._start_s, end_s)
                methods[label] = POWER_INTEGRATION
                continue
            counter = counters[label]
            energy = counter_or_integrated(
                device,
                counter.delta_j,
                "counter delta",
                counter.went_backwards,
                self._limits_w[label],
                samples,
                self._start_s,
                end_s,
            )
            per_device[label], methods[label] = energy.joules, energy.method
            if energy.warning is not None:
                warnings.append(energy.warning)
        info = EnergyInfo(
            source="nvml",
            measured=True,
            method=", ".join(sorted(set(methods.values()))),
            assumptions={
                "per_device_method": methods,
                "sample_hz": self.poller.sample_hz,
                "counter_step_s": self._step_s,
            },
            per_device_j=per_device,
        )
        return EnergyReading(sum(per_device.values()), info, warnings, start_s=self._start_s, end_s=end_s)

    def close(self) -> None:
        self.poller.close()


def gpu_devices(meter: str, devices: DeviceSet) -> list[nvml_devices.NvmlDevice]:
    """The NVML devices of a GPU run, or `MeterUnavailable` saying why they cannot be read."""
    if not devices.uses_gpu:
        raise MeterUnavailable(meter, "the experiment runs on no GPU", "use rapl or estimate for CPU runs")
    session = nvml_devices.open_session()
    if session is None:
        raise MeterUnavailable(
            meter,
            "NVML could not be loaded or initialised",
            "pip install nvidia-ml-py and install the NVIDIA driver (nvidia-smi must work)",
        )
    found = session.devices_for(list(devices.gpu_indices))
    missing = set(devices.gpu_indices) - {d.cuda_index for d in found}
    if missing:
        raise MeterUnavailable(
            meter,
            f"CUDA device(s) {sorted(missing)} are not visible to NVML",
            "check CUDA_VISIBLE_DEVICES and the device setting",
        )
    return found


def create(config: EnergyConfig, devices: DeviceSet) -> NvmlMeter:
    found = gpu_devices("nvml", devices)
    try:
        for device in found:  # probe now, so a board that cannot measure fails at selection
            if device.total_energy_mj() is None and device.power_w() is None:
                raise MeterUnavailable(
                    "nvml",
                    f"{device.label} answers NOT_SUPPORTED for both energy and power",
                    "use --llem-energy=estimate on this board",
                )
        return NvmlMeter(found, config.sample_hz, timeseries=config.sampler)
    except DeviceLost as exc:
        raise MeterUnavailable(
            "nvml", str(exc).split(";")[0], "reset the GPU or reboot, then rerun"
        ) from None
