"""The `estimate` meter: process CPU seconds x assumed watts per busy core.

It runs anywhere and is always labelled estimated. Process CPU time counts every thread of
this process (torch's spin-waiting workers included, which do draw power), and nothing else.
"""

from __future__ import annotations

import time

from pytest_llem.config import EnergyConfig
from pytest_llem.energy.base import DeviceSet, EnergyReading
from pytest_llem.results import EnergyInfo

ASSUMPTION_BASIS = (
    "assumed, not measured: a busy server/desktop core draws roughly 5-15 W "
    "(e.g. 205 W TDP / 20 cores = 10 W); set energy.watts_per_core to your CPU's TDP / cores"
)


class EstimateMeter:
    name = "estimate"
    measured = False

    def __init__(self, watts_per_core: float) -> None:
        self.watts_per_core = watts_per_core
        self._cpu_start = 0.0
        self._wall_start = 0.0

    def start(self) -> None:
        self._wall_start = time.perf_counter()
        self._cpu_start = time.process_time()

    def stop(self) -> EnergyReading:
        cpu_s = time.process_time() - self._cpu_start
        wall_s = time.perf_counter() - self._wall_start
        energy_j = cpu_s * self.watts_per_core
        info = EnergyInfo(
            source="estimate",
            measured=False,
            method="process CPU seconds x watts per busy core",
            assumptions={
                "watts_per_busy_core": self.watts_per_core,
                "basis": ASSUMPTION_BASIS,
                "cpu_seconds": cpu_s,
                "wall_seconds": wall_s,
                "busy_cores": cpu_s / wall_s if wall_s > 0 else None,
            },
            per_device_j={"cpu": energy_j},
        )
        return EnergyReading(energy_j=energy_j, info=info)

    def close(self) -> None:
        pass


class NoMeter:
    """`none`: measures no energy, so no energy figure appears anywhere."""

    name = "none"
    measured = False

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
