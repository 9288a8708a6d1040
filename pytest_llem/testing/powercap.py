"""A simulated Linux powercap tree (intel-rapl zones) whose counters advance in real time.

A background thread rewrites each zone's `energy_uj` every `update_s` from a power trace,
modulo `max_energy_range_uj`, exactly as the kernel presents RAPL counters. Point the rapl
meter at it with LLEM_POWERCAP_ROOT (done by `simulated_powercap`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pytest_llem.testing.traces import Trace, as_trace


@dataclass
class SimulatedZone:
    directory: str  # e.g. "intel-rapl:0" or "intel-rapl:0:2"
    name: str  # "package-0", "core", "dram"
    power_w: Trace | float | Callable[[float], float]
    max_energy_range_uj: int = 262_143_328_850
    start_uj: int = 0

    def energy_uj(self, t: float) -> int:
        trace = as_trace(self.power_w)
        assert trace is not None
        return int(self.start_uj + trace.integral(0.0, t) * 1e6) % self.max_energy_range_uj


class SimulatedPowercap:
    def __init__(self, root: Path, zones: list[SimulatedZone], update_s: float = 0.001) -> None:
        self.root = root
        self.zones = zones
        self.update_s = update_s
        self._origin = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-powercap", daemon=True)
        for zone in zones:
            directory = root / zone.directory
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "name").write_text(zone.name + "\n")
            (directory / "max_energy_range_uj").write_text(f"{zone.max_energy_range_uj}\n")
        self._write(0.0)

    def now(self) -> float:
        return time.perf_counter() - self._origin

    def true_energy_j(self, zone_name: str, t0: float, t1: float) -> float:
        zone = next(z for z in self.zones if z.name == zone_name)
        trace = as_trace(zone.power_w)
        assert trace is not None
        return trace.integral(t0, t1)

    def _write(self, t: float) -> None:
        for zone in self.zones:
            target = self.root / zone.directory / "energy_uj"
            tmp = target.with_suffix(".tmp")
            tmp.write_text(f"{zone.energy_uj(t)}\n")
            os.replace(tmp, target)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._write(self.now())
            self._stop.wait(self.update_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def simulated_powercap(
    root: Path, zones: list[SimulatedZone], update_s: float = 0.001
) -> Iterator[SimulatedPowercap]:
    """Create the tree under `root`, keep it ticking, and point LLEM_POWERCAP_ROOT at it."""
    tree = SimulatedPowercap(root, zones, update_s)
    previous = os.environ.get("LLEM_POWERCAP_ROOT")
    os.environ["LLEM_POWERCAP_ROOT"] = str(root)
    tree.start()
    try:
        yield tree
    finally:
        tree.stop()
        if previous is None:
            os.environ.pop("LLEM_POWERCAP_ROOT", None)
        else:
            os.environ["LLEM_POWERCAP_ROOT"] = previous
