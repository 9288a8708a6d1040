"""The `estimate` meter: CPU seconds of this process tree x assumed watts per busy core.

It runs anywhere and is always labelled estimated. The CPU time is that of the whole process
tree (this process, every thread of it, its child processes: vLLM's engine core is one), read
through psutil; spin-waiting worker threads count too, and they do draw power.

Each window's reading carries its own figures (CPU seconds, wall seconds, busy cores, the share
of the machine other processes used); the experiment averages them over its windows exactly as
it averages `energy_j`, so the assumptions printed beside a figure are the ones that made it.
"""

from __future__ import annotations

from collections.abc import Callable

from pytest_llem.energy.base import DeviceSet, EnergyReading
from pytest_llem.hardware import cpu_time
from pytest_llem.schema import quality
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.results import EnergyInfo

ASSUMPTION_BASIS = (
    "assumed, not measured: a busy server/desktop core draws roughly 5-15 W "
    "(e.g. 205 W TDP / 20 cores = 10 W); set energy.watts_per_core to your CPU's TDP / cores"
)
BASELINE_SKIPPED = (
    "not taken: the estimate meter counts only this process tree's CPU time, so an idle window "
    "would measure the harness itself, not the machine's idle draw"
)


class EstimateMeter:
    name = "estimate"
    measured = False
    baseline_skipped_reason: str | None = BASELINE_SKIPPED

    def __init__(
        self,
        watts_per_core: float,
        snapshot: Callable[[], cpu_time.CpuSnapshot] = cpu_time.take_snapshot,
        contention_share: float = cpu_time.CONTENTION_SHARE,
    ) -> None:
        self.watts_per_core = watts_per_core
        self._snapshot = snapshot
        self._contention_share = contention_share
        self._start: cpu_time.CpuSnapshot | None = None
        # a mid-window read needs only the tree's CPU time, not the machine's (/proc/stat)
        self._tree_cpu_s: Callable[[], float] = (
            cpu_time.process_tree_cpu_s
            if snapshot is cpu_time.take_snapshot
            else lambda: snapshot().tree_cpu_s
        )

    def start(self) -> None:
        self._start = self._snapshot()

    def read_j(self) -> float | None:
        """The process tree's CPU seconds since `start()` x watts per busy core, now."""
        if self._start is None:
            return None
        return (self._tree_cpu_s() - self._start.tree_cpu_s) * self.watts_per_core

    def stop(self) -> EnergyReading:
        if self._start is None:
            raise RuntimeError("EstimateMeter.stop() called without start()")
        start, end = self._start, self._snapshot()
        self._start = None
        cpu_s = end.tree_cpu_s - start.tree_cpu_s
        wall_s = end.wall_s - start.wall_s
        others = cpu_time.others_share(start, end)
        energy_j = cpu_s * self.watts_per_core
        info = EnergyInfo(
            source="estimate",
            measured=False,
            method="process-tree CPU seconds x watts per busy core",
            assumptions={
                "watts_per_busy_core": self.watts_per_core,
                "basis": ASSUMPTION_BASIS,
                "cpu_seconds": cpu_s,
                "wall_seconds": wall_s,
                "busy_cores": cpu_s / wall_s if wall_s > 0 else None,
                "other_processes_cpu_share": others,
            },
            per_device_j={"cpu": energy_j},
        )
        warning = quality.cpu_contention(others, self._contention_share)
        return EnergyReading(energy_j=energy_j, info=info, warnings=[warning] if warning else [])

    def close(self) -> None:
        pass


class NoMeter:
    """`none`: measures no energy, so no energy figure appears anywhere."""

    name = "none"
    measured = False
    baseline_skipped_reason: str | None = "no energy is measured"

    def start(self) -> None:
        pass

    def stop(self) -> EnergyReading:
        return EnergyReading(energy_j=None, info=EnergyInfo(source="none", measured=False, method="none"))

    def close(self) -> None:
        pass


def create_estimate(config: EnergyConfig, devices: DeviceSet) -> EstimateMeter:
    return EstimateMeter(config.watts_per_core)


def create_none(config: EnergyConfig, devices: DeviceSet) -> NoMeter:
    return NoMeter()
