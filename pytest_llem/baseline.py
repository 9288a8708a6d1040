"""Idle power baseline: measured with the accelerator context alive and no model loaded.

A CUDA context alone raises idle power by tens of watts, so the baseline is taken after it
exists. Results are cached per (meter, device set) for `ttl_s` in memory and, optionally,
in a JSON file so consecutive sessions on a quiet machine skip the wait.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_llem.energy.base import EnergyMeter


@dataclass(frozen=True)
class Baseline:
    power_w: float
    duration_s: float
    measured_at: float  # unix time
    source: str


def measure_baseline(meter: EnergyMeter, duration_s: float) -> Baseline:
    start = time.perf_counter()
    meter.start()
    time.sleep(duration_s)
    reading = meter.stop()
    elapsed = time.perf_counter() - start
    energy = reading.energy_j or 0.0
    return Baseline(power_w=energy / elapsed, duration_s=elapsed, measured_at=time.time(), source=meter.name)


class BaselineCache:
    def __init__(self, ttl_s: float, disk_path: Path | None = None) -> None:
        self.ttl_s = ttl_s
        self.disk_path = disk_path
        self._memory: dict[str, Baseline] = {}

    @staticmethod
    def key(meter_name: str, device_key: str) -> str:
        return f"{socket.gethostname()}|{meter_name}|{device_key}"

    def _fresh(self, baseline: Baseline | None) -> Baseline | None:
        if baseline is None or time.time() - baseline.measured_at > self.ttl_s:
            return None
        return baseline

    def _read_disk(self) -> dict[str, dict[str, float | str]]:
        if self.disk_path is None or not self.disk_path.is_file():
            return {}
        try:
            data: dict[str, dict[str, float | str]] = json.loads(self.disk_path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> Baseline | None:
        hit = self._fresh(self._memory.get(key))
        if hit is None:
            stored = self._read_disk().get(key)
            if stored is not None:
                hit = self._fresh(Baseline(**stored))  # type: ignore[arg-type]
                if hit is not None:
                    self._memory[key] = hit
        return hit

    def put(self, key: str, baseline: Baseline) -> None:
        self._memory[key] = baseline
        if self.disk_path is None:
            return
        data = self._read_disk()
        data[key] = baseline.__dict__
        self.disk_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.disk_path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, self.disk_path)
