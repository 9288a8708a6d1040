"""Hardware stand-ins for testing energy code (and your own benchmark suites) without a GPU.

    from pytest_llem.testing import SimulatedGpu, simulated_gpus

    with simulated_gpus([SimulatedGpu(power_w=250.0)]) as sim:
        ...  # engine="simulated", device="cuda:0", energy="nvml"

`simulated_gpus` installs a simulated NVML as the `pynvml` module, binds the `simulated`
engine to it, and installs a simulated clock (`pytest_llem.hardware.clock`): time moves only when the
simulated engine generates (or `sim.clock.advance(s)` is called), so a 30 s idle baseline or a
10 s window takes no real time and every meter, sampler and baseline reading is exact.
Pass `clock=pytest_llem.hardware.clock.WALL_CLOCK` to run the stand-in hardware in real time instead
(e.g. to measure the cost of the sampler thread beside real inference).
`simulated_powercap` builds a RAPL tree for the `rapl` meter on the same kind of clock.

Real NVML clients that imported `pynvml` before the simulation started (Zeus, and CodeCarbon
through Zeus) are rebound to the simulated module for its duration, and Zeus's cached GPU list
is dropped on entry and exit, so the real `zeus.monitor.ZeusMonitor` measures simulated GPUs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from pytest_llem.hardware import clock as clocks
from pytest_llem.hardware.clock import Clock, SimulatedClock
from pytest_llem.testing.engine import SimulatedBackend, SimulatedWorkload
from pytest_llem.testing.nvml import SimulatedGpu, SimulatedNvml
from pytest_llem.testing.powercap import SimulatedPowercap, SimulatedZone, simulated_powercap
from pytest_llem.testing.simulation import _ACTIVE, Simulation, active_simulation
from pytest_llem.testing.traces import Constant, Function, Steps, Trace

__all__ = [
    "Constant",
    "Function",
    "SimulatedBackend",
    "SimulatedClock",
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


# Modules of real NVML clients that bind `pynvml` at import time.
NVML_CLIENT_MODULES = ("zeus.device.gpu.nvidia", "codecarbon.core.gpu")


def _bind_nvml_clients(nvml: ModuleType | SimulatedNvml) -> None:
    """Point already-imported NVML clients at `nvml` and drop what Zeus cached about GPUs."""
    for name in NVML_CLIENT_MODULES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "pynvml"):
            setattr(module, "pynvml", nvml)  # noqa: B010 - a module attribute mypy cannot see
    zeus_nvidia = sys.modules.get("zeus.device.gpu.nvidia")
    if zeus_nvidia is not None:
        zeus_nvidia.nvml_is_available.cache_clear()
    zeus_gpu = sys.modules.get("zeus.device.gpu")
    if zeus_gpu is not None:
        setattr(zeus_gpu, "_gpus", None)  # noqa: B010 - Zeus's GPU singleton


@contextmanager
def simulated_gpus(
    gpus: list[SimulatedGpu] | None = None,
    workload: SimulatedWorkload | None = None,
    driver_version: str = "550.54.15",
    clock: Clock | None = None,
) -> Iterator[Simulation]:
    """Install a simulated NVML as `pynvml` and a simulated clock, and bind the `simulated`
    engine to both."""
    log: list[tuple[str, float, Any]] = []
    nvml = SimulatedNvml(
        gpus if gpus is not None else [SimulatedGpu()],
        clock=clock or SimulatedClock(),
        driver_version=driver_version,
        log=log,
    )
    simulation = Simulation(nvml, SimulatedBackend(workload or SimulatedWorkload(), log, nvml.clock), log)
    previous = sys.modules.get("pynvml")
    sys.modules["pynvml"] = nvml  # type: ignore[assignment]
    _bind_nvml_clients(nvml)
    _ACTIVE.append(simulation)
    try:
        with clocks.installed(nvml.clock):
            yield simulation
    finally:
        _ACTIVE.remove(simulation)
        if previous is None:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = previous
        if _ACTIVE:
            _bind_nvml_clients(_ACTIVE[-1].nvml)
        else:
            try:
                restored: ModuleType | None = importlib.import_module("pynvml")
            except ImportError:
                restored = None
            if restored is not None:
                _bind_nvml_clients(restored)
