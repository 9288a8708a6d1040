"""The energy-meter protocol: begin a window, end it, get a typed reading back.

A meter knows which devices it measures; the experiment synchronises the accelerator before
calling `stop()`, so the window closes only after the work it measures has finished.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pytest_llem.results import EnergyInfo, MeasurementWarning


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


@runtime_checkable
class EnergyMeter(Protocol):
    name: str
    measured: bool

    def start(self) -> None:
        """Open a window. Called after the accelerator has been synchronised."""

    def stop(self) -> EnergyReading:
        """Close the window and return its energy. Called after synchronisation."""

    def close(self) -> None:
        """Release what the meter holds (threads, NVML)."""


class Poller:
    """A daemon thread that calls `callback()` every `interval_s` until stopped.

    Meters use it to accumulate counters (wraparound, resets) and to integrate power.
    """

    def __init__(self, interval_s: float, callback: Callable[[], None], name: str) -> None:
        self._interval_s = interval_s
        self._callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        next_tick = time.perf_counter()
        while not self._stop.is_set():
            self._callback()
            next_tick += self._interval_s
            self._stop.wait(max(0.0, next_tick - time.perf_counter()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


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
