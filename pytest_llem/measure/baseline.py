"""Idle power baseline: measured with the accelerator context alive and no model loaded.

A CUDA context alone raises idle power by tens of watts, so the baseline is taken after it
exists. Results are cached per (meter, device set) for `ttl_s` in memory and, optionally,
in a JSON file so consecutive sessions on a quiet machine skip the wait.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pytest_llem.energy.base import EnergyMeter
from pytest_llem.hardware import clock as clocks
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.store.files import write_text


@dataclass(frozen=True)
class Baseline:
    power_w: float
    duration_s: float
    measured_at: float  # unix time
    source: str


def measure_baseline(meter: EnergyMeter, duration_s: float) -> Baseline:
    """Mean power of an idle window of `duration_s` on the current clock (`pytest_llem.hardware.clock`:
    real seconds on hardware, instant under `pytest_llem.testing`). The power divides the
    energy by the meter's own window span where the meter reports it, so both cover the same
    instants. The meter's threads stop on every exit path."""
    clock = clocks.current()
    start = clock.now()
    meter.start()
    try:
        clock.sleep(duration_s)
        reading = meter.stop()
    except BaseException:
        meter.close()
        raise
    end = clock.now()
    if reading.start_s is not None and reading.end_s is not None:
        start, end = reading.start_s, reading.end_s
    elapsed = end - start
    energy = reading.energy_j or 0.0
    power = energy / elapsed if elapsed > 0 else 0.0
    return Baseline(power_w=power, duration_s=elapsed, measured_at=time.time(), source=meter.name)


class BaselineCache:
    def __init__(self, ttl_s: float, disk_path: Path | None = None) -> None:
        self.ttl_s = ttl_s
        self.disk_path = disk_path
        self._memory: dict[str, Baseline] = {}

    @staticmethod
    def key(meter_name: str, device_key: str, figure_settings: str) -> str:
        """`figure_settings`: every setting that changes the baseline figure (see
        `figure_settings()`), so a cached baseline is never reused under other assumptions."""
        return f"{socket.gethostname()}|{meter_name}|{device_key}|{figure_settings}"

    def _fresh(self, baseline: Baseline | None) -> Baseline | None:
        if baseline is None or time.time() - baseline.measured_at > self.ttl_s:
            return None
        return baseline

    def _ignore(self, reason: str) -> None:
        """A cache file that cannot be used costs a new baseline measurement, never the
        experiment: warn, naming the file, and go on."""
        warnings.warn(
            f"baseline cache {self.disk_path} {reason}; ignoring it (the baseline is measured "
            "again and the file rewritten)",
            RuntimeWarning,
            stacklevel=3,
        )

    def _read_disk(self) -> dict[str, dict[str, float | str]]:
        if self.disk_path is None:
            return {}
        try:
            if not self.disk_path.is_file():
                return {}
            data = json.loads(self.disk_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, or not JSON
            self._ignore(f"cannot be read ({type(exc).__name__}: {str(exc)[:120]})")
            return {}
        if not isinstance(data, dict):
            self._ignore(f"holds a JSON {type(data).__name__}, not an object of baselines")
            return {}
        return data

    def _entry(self, stored: object) -> Baseline | None:
        baseline = None
        if isinstance(stored, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):  # judged just below
                baseline = Baseline(
                    power_w=float(stored["power_w"]),
                    duration_s=float(stored["duration_s"]),
                    measured_at=float(stored["measured_at"]),
                    source=str(stored["source"]),
                )
        if baseline is None or not all(
            math.isfinite(v) for v in (baseline.power_w, baseline.duration_s, baseline.measured_at)
        ):
            self._ignore(f"holds an entry that is not a baseline ({str(stored)[:80]})")
            return None
        return baseline

    def get(self, key: str) -> Baseline | None:
        hit = self._fresh(self._memory.get(key))
        if hit is None:
            stored = self._read_disk().get(key)
            if stored is not None:
                hit = self._fresh(self._entry(stored))
                if hit is not None:
                    self._memory[key] = hit
        return hit

    def put(self, key: str, baseline: Baseline) -> None:
        self._memory[key] = baseline
        if self.disk_path is None:
            return
        data = self._read_disk()
        data[key] = baseline.__dict__
        try:  # atomically, with the user's umask, and no temporary file left on any failure
            write_text(self.disk_path, json.dumps(data, indent=2))
        except OSError as exc:  # the measured baseline is still used from memory
            self._ignore(f"cannot be written ({exc.strerror or exc})")


def figure_settings(energy: EnergyConfig, duration_s: float) -> str:
    """The energy settings that change a baseline figure, canonical JSON: all of them except
    those that only say where or how long to keep it (cache path, TTL) or whether to sample."""
    settings = energy.model_dump(mode="json", exclude={"baseline_cache_path", "baseline_ttl_s", "sampler"})
    settings["baseline_s"] = duration_s
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))
