"""The energy-meter protocol: begin a window, end it, get a typed reading back.

A meter knows which devices it measures; the experiment synchronises the accelerator before
calling `stop()`, so the window closes only after the work it measures has finished.
A meter that cannot measure on this machine says so when it is created (`MeterUnavailable`),
never at `stop()`; a failure once a window is open is a `MeasurementError`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pytest_llem.hardware.sampler import DevicePoller
from pytest_llem.schema.results import EnergyInfo, MeasurementWarning


@dataclass(frozen=True)
class DeviceSet:
    """The devices an experiment runs on, in CUDA numbering."""

    gpu_indices: tuple[int, ...] = ()

    @property
    def uses_gpu(self) -> bool:
        return bool(self.gpu_indices)

    @property
    def key(self) -> str:
        return "cpu" if not self.gpu_indices else "cuda:" + ",".join(map(str, self.gpu_indices))


@dataclass
class EnergyReading:
    """What one window measured. `energy_j` is None only for the `none` meter."""

    energy_j: float | None
    info: EnergyInfo
    warnings: list[MeasurementWarning] = field(default_factory=list)
    # the instants (pytest_llem.hardware.clock) the meter's window opened and closed, where the meter
    # knows them: window_s is taken from these so energy and time cover the same range
    start_s: float | None = None
    end_s: float | None = None


@runtime_checkable
class EnergyMeter(Protocol):
    name: str
    measured: bool

    def start(self) -> None:
        """Open a window. Called after the accelerator has been synchronised."""

    def stop(self) -> EnergyReading:
        """Close the window and return its energy. Called after synchronisation."""

    def close(self) -> None:
        """Abandon any open window and stop the meter's threads; never raises. The meter can
        be started again afterwards."""


@runtime_checkable
class ReadsMidWindow(Protocol):
    """A meter whose counters can be read while its window is open, which is what splits a
    window at instants (prefill and decode, vLLM's steady state: measure/phases.py)."""

    def read_j(self) -> float | None:
        """Energy since `start()` up to now, every device of `energy_j` together, as exact as
        the meter's counters; None when it cannot be read now (a board without an energy
        counter). Never raises for a device lost mid-window: `stop()` reports that."""


def mid_window_reader(meter: EnergyMeter) -> ReadsMidWindow | None:
    """The meter, where it can be read mid-window; None for meters that only see whole windows
    (zeus, whose windows hold RAPL too; codecarbon; none)."""
    return meter if isinstance(meter, ReadsMidWindow) else None


@runtime_checkable
class PollsDevices(Protocol):
    """A GPU meter that polls its devices; the window's timeseries comes from the same poller."""

    poller: DevicePoller


def device_poller(meter: EnergyMeter) -> DevicePoller | None:
    """The meter's own device poller, which the sampler then shares, or None."""
    return meter.poller if isinstance(meter, PollsDevices) else None


def trapezoid_energy_j(samples: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """Integrate (time, watts) samples over [start_s, end_s], holding the end values flat."""
    points = sorted((t, p) for t, p in samples if start_s <= t <= end_s)
    if not points:
        raise ValueError("no power samples inside the window")
    if points[0][0] > start_s:
        points.insert(0, (start_s, points[0][1]))
    if points[-1][0] < end_s:
        points.append((end_s, points[-1][1]))
    return sum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in itertools.pairwise(points))
