"""The active simulation: the simulated NVML, clock and engine that `simulated_gpus()`
installed, found by the `simulated` engine's registry entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llem.hardware.clock import Clock
    from pytest_llem.testing.engine import SimulatedBackend
    from pytest_llem.testing.nvml import SimulatedNvml


@dataclass
class Simulation:
    nvml: SimulatedNvml
    backend: SimulatedBackend
    log: list[tuple[str, float, Any]] = field(default_factory=list)

    @property
    def clock(self) -> Clock:
        return self.nvml.clock

    def events(self, *kinds: str) -> list[tuple[str, float, Any]]:
        return [event for event in self.log if not kinds or event[0] in kinds]


_ACTIVE: list[Simulation] = []


def active_simulation() -> Simulation:
    if not _ACTIVE:
        raise RuntimeError(
            "engine='simulated' needs an active simulation: wrap the run in pytest_llem.testing.simulated_gpus(...)"
        )
    return _ACTIVE[-1]
