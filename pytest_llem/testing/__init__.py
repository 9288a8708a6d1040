"""Hardware stand-ins for testing energy code (and your own benchmark suites) without a GPU.

    from pytest_llem.testing import SimulatedGpu, simulated_gpus

    with simulated_gpus([SimulatedGpu(power_w=250.0)]) as sim:
        ...  # engine="simulated", device="cuda:0", energy="nvml"

`simulated_gpus` installs a simulated NVML as the `pynvml` module and binds the `simulated`
engine to it; `simulated_powercap` builds a ticking RAPL tree for the `rapl` meter.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pytest_llem.testing.engine import SimulatedBackend, SimulatedWorkload
from pytest_llem.testing.nvml import SimulatedGpu, SimulatedNvml
from pytest_llem.testing.powercap import SimulatedPowercap, SimulatedZone, simulated_powercap
from pytest_llem.testing.traces import Constant, Function, Steps, Trace

__all__ = [
    "Constant",
    "Function",
    "SimulatedBackend",
    "SimulatedGpu",
    "SimulatedNvml",
    "SimulatedPowercap",
    "SimulatedWorkload",
    "SimulatedZone",
    "Simulation",
    "Steps",
    "Trace",
    "active_simulation",
    "simulated_gpus",
    "simulated_powercap",
]


@dataclass
class Simulation:
    nvml: SimulatedNvml
    backend: SimulatedBackend
    log: list[tuple[str, float, Any]] = field(default_factory=list)

    def events(self, *kinds: str) -> list[tuple[str, float, Any]]:
        return [event for event in self.log if not kinds or event[0] in kinds]


_ACTIVE: list[Simulation] = []


def active_simulation() -> Simulation:
    if not _ACTIVE:
        raise RuntimeError(
            "engine='simulated' needs an active simulation: wrap the run in pytest_llem.testing.simulated_gpus(...)"
        )
    return _ACTIVE[-1]


@contextmanager
def simulated_gpus(
    gpus: list[SimulatedGpu] | None = None,
    workload: SimulatedWorkload | None = None,
    driver_version: str = "550.54.15",
) -> Iterator[Simulation]:
    """Install a simulated NVML as `pynvml` and bind the `simulated` engine to it."""
    log: list[tuple[str, float, Any]] = []
    nvml = SimulatedNvml(
        gpus if gpus is not None else [SimulatedGpu()], driver_version=driver_version, log=log
    )
    simulation = Simulation(nvml, SimulatedBackend(workload or SimulatedWorkload(), log, nvml.clock), log)
    previous = sys.modules.get("pynvml")
    sys.modules["pynvml"] = nvml  # type: ignore[assignment]
    _ACTIVE.append(simulation)
    try:
        yield simulation
    finally:
        _ACTIVE.remove(simulation)
        if previous is None:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = previous
