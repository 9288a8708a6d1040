"""A simulated Linux powercap tree (intel-rapl zones) on a controllable clock.

Each zone's `energy_uj` file holds the integral of a power trace, modulo
`max_energy_range_uj`, exactly as the kernel presents RAPL counters. The files are rewritten
whenever the clock moves (a `SimulatedClock` by default: `tree.clock.advance(s)`, or the
clock of an active `simulated_gpus`), so a meter polling on that clock reads exact values
with no thread and no waiting. Pass `clock=pytest_llem.hardware.clock.WALL_CLOCK` for a tree that
ticks in real time (a background thread rewrites the files every `update_s`). Point the rapl
meter at it with LLEM_POWERCAP_ROOT (done by `simulated_powercap`).

Zones are given by directory: `intel-rapl:N` (a package, or `psys` for the platform zone) and
`intel-rapl:N:M` (a subzone: core, uncore, dram).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from pytest_llem.hardware import clock as clocks
from pytest_llem.hardware.clock import Clock, SimulatedClock
from pytest_llem.testing.traces import Trace, as_trace


@dataclass
class SimulatedZone:
    directory: str  # e.g. "intel-rapl:0" or "intel-rapl:0:2"
    name: str  # "package-0", "core", "dram", "psys"
    power_w: Trace | float | Callable[[float], float]
    max_energy_range_uj: int = 262_143_328_850
    start_uj: int = 0

    def energy_uj(self, t: float) -> int:
        trace = as_trace(self.power_w)
        assert trace is not None
        return int(self.start_uj + trace.integral(0.0, t) * 1e6) % self.max_energy_range_uj


class SimulatedPowercap:
    def __init__(
        self, root: Path, zones: list[SimulatedZone], update_s: float = 0.001, clock: Clock | None = None
    ) -> None:
        self.root = root
        self.zones = zones
        self.update_s = update_s
        self.clock: Clock = clock or SimulatedClock()
        self._origin = self.clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for zone in zones:
            directory = root / zone.directory
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "name").write_text(zone.name + "\n")
            (directory / "max_energy_range_uj").write_text(f"{zone.max_energy_range_uj}\n")
        self._write(0.0)

    def now(self) -> float:
        """Seconds since the tree was built (its traces' time)."""
        return self.clock.now() - self._origin

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

    def _on_time(self, instant: float) -> None:
        self._write(instant - self._origin)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._write(self.now())
            self._stop.wait(self.update_s)

    def start(self) -> None:
        if isinstance(self.clock, SimulatedClock):
            self.clock.watch(self._on_time)
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="simulated-powercap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if isinstance(self.clock, SimulatedClock):
            self.clock.unwatch(self._on_time)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


@contextmanager
def simulated_powercap(
    root: Path, zones: list[SimulatedZone], update_s: float = 0.001, clock: Clock | None = None
) -> Iterator[SimulatedPowercap]:
    """Create the tree under `root`, point LLEM_POWERCAP_ROOT at it, and make its clock the
    current one (`pytest_llem.hardware.clock`) so meters poll on it. Without `clock`, the tree uses
    the current simulated clock (that of an active `simulated_gpus`) or a new one."""
    current = clocks.current()
    tree_clock = clock or (current if isinstance(current, SimulatedClock) else SimulatedClock())
    tree = SimulatedPowercap(root, zones, update_s, tree_clock)
    previous = os.environ.get("LLEM_POWERCAP_ROOT")
    os.environ["LLEM_POWERCAP_ROOT"] = str(root)
    tree.start()
    try:
        with ExitStack() as stack:
            if tree_clock is not current:
                stack.enter_context(clocks.installed(tree_clock))
            yield tree
    finally:
        tree.stop()
        if previous is None:
            os.environ.pop("LLEM_POWERCAP_ROOT", None)
        else:
            os.environ["LLEM_POWERCAP_ROOT"] = previous
