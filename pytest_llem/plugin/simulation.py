"""`LLEM_SIMULATED_GPUS=N`: every process of a pytest session sees N simulated GPUs.

The variable is read by each process that loads the plugin (the session itself, its xdist
workers, the A/B base worker, each shard), so a user can run a multi-GPU benchmark suite on a
machine without GPUs, and this project can test its multi-GPU paths. The GPUs are
`pytest_llem.testing.SimulatedGpu` boards installed as `pynvml` for the whole session, on the
wall clock (the simulated engine generates in real time), for `engine="simulated"` with
`device="cuda:K"` and the NVML-based meters. `LLEM_SIMULATED_CLOCK=1` puts each process on a
simulated clock instead, with continuous energy counters: time moves only as the simulated
engine generates, so every energy figure is the board's exact energy, in any process and any
test order, and a run takes no time - how a multi-GPU suite's figures under `-n` are checked
against its `-n 0` figures.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_llem.testing import Simulation

ENV = "LLEM_SIMULATED_GPUS"
CLOCK_ENV = "LLEM_SIMULATED_CLOCK"  # "1": the simulated GPUs run on a simulated clock instead
MAX_SIMULATED_GPUS = 64


def simulated_gpu_count() -> int | None:
    """The number of GPUs `LLEM_SIMULATED_GPUS` asks for, None when it is unset or empty; a
    value that is not a whole number from 1 to 64 is one usage error naming it."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_SIMULATED_GPUS:
        raise pytest.UsageError(
            f"{ENV}={text!r} is invalid: expected a whole number of GPUs from 1 to "
            f"{MAX_SIMULATED_GPUS}, e.g. {ENV}=4 (unset it to use the real hardware)"
        )
    return int(text)


class SimulatedGpusPlugin:
    """Holds the session's simulation from `pytest_configure` until `pytest_unconfigure`."""

    def __init__(self, count: int) -> None:
        from pytest_llem.hardware.clock import WALL_CLOCK, Clock, SimulatedClock
        from pytest_llem.testing import SimulatedGpu, simulated_gpus

        simulated = os.environ.get(CLOCK_ENV, "").strip() == "1"
        # on the simulated clock the counters are continuous: each process's clock starts at 0,
        # so where a window falls between 100 ms counter updates depends on what that process
        # ran before; a continuous counter makes every figure the board's exact energy, the
        # same in any process and any test order (-n 0 against -n N)
        gpus = [SimulatedGpu(uuid=f"GPU-11111111-2222-3333-4444-{index:012d}") for index in range(count)]
        for gpu in gpus if simulated else []:
            gpu.counter_period_s = 0.0
        clock: Clock = SimulatedClock() if simulated else WALL_CLOCK
        self._context: AbstractContextManager[Simulation] = simulated_gpus(gpus, clock=clock)
        self.simulation = self._context.__enter__()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._context.__exit__(None, None, None)
