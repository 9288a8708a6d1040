"""Background power/thermal sampler and the 1 Hz timeseries it produces.

It reads each GPU in use at `sample_hz` (default 10 Hz) and buckets the samples into one row
per (second, device) with the fixed schema below; unknown values stay null, never zero.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llem.nvml_devices import NvmlDevice, throttle_kinds
from pytest_llem.results import ThermalThrottle


@dataclass(frozen=True)
class Sample:
    time_s: float  # perf_counter seconds
    gpu_index: int
    power_w: float | None
    temperature_c: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    sm_utilisation_pct: float | None
    throttle_reasons: int | None


def read_sample(device: NvmlDevice, now_s: float) -> Sample:
    used, total = device.memory_used_total_mb()
    return Sample(
        time_s=now_s,
        gpu_index=device.cuda_index,
        power_w=device.power_w(),
        temperature_c=device.temperature_c(),
        memory_used_mb=used,
        memory_total_mb=total,
        sm_utilisation_pct=device.utilisation_pct(),
        throttle_reasons=device.throttle_mask(),
    )


class Sampler:
    """Runs while a measurement window is open; `samples` holds everything it read."""

    def __init__(self, devices: Sequence[NvmlDevice], sample_hz: float) -> None:
        self._devices = list(devices)
        self._interval_s = 1.0 / sample_hz
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[Sample] = []

    @property
    def has_sources(self) -> bool:
        return bool(self._devices)

    def _run(self) -> None:
        next_tick = time.perf_counter()
        while not self._stop.is_set():
            now = time.perf_counter()
            self.samples.extend(read_sample(device, now) for device in self._devices)
            next_tick += self._interval_s
            self._stop.wait(max(0.0, next_tick - time.perf_counter()))

    def start(self) -> None:
        if not self._devices:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="llem-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.samples


TIMESERIES_COLUMNS = (
    ("timestamp_s", "float64"),
    ("gpu_index", "int32"),
    ("power_w", "float32"),
    ("temperature_c", "float32"),
    ("memory_used_mb", "float32"),
    ("memory_total_mb", "float32"),
    ("sm_utilisation_pct", "float32"),
    ("throttle_reasons", "int64"),
)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _max(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def bucket_per_second(samples: Sequence[Sample], origin_s: float) -> list[dict[str, Any]]:
    """One row per (whole second since `origin_s`, device): means of power/temperature/utilisation,
    the highest memory use, and the OR of the throttle bitmasks seen in that second."""
    groups: dict[tuple[int, int], list[Sample]] = {}
    for sample in samples:
        second = math.floor(sample.time_s - origin_s)
        groups.setdefault((second, sample.gpu_index), []).append(sample)
    rows = []
    for (second, gpu_index), group in sorted(groups.items()):
        masks = [s.throttle_reasons for s in group if s.throttle_reasons is not None]
        mask = 0
        for m in masks:
            mask |= m
        rows.append(
            {
                "timestamp_s": float(second),
                "gpu_index": gpu_index,
                "power_w": _mean([s.power_w for s in group]),
                "temperature_c": _mean([s.temperature_c for s in group]),
                "memory_used_mb": _max([s.memory_used_mb for s in group]),
                "memory_total_mb": _max([s.memory_total_mb for s in group]),
                "sm_utilisation_pct": _mean([s.sm_utilisation_pct for s in group]),
                "throttle_reasons": mask if masks else None,
            }
        )
    return rows


def write_timeseries(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the 8-column Parquet atomically (temporary file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in TIMESERIES_COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def throttle_summary(samples: Sequence[Sample], interval_s: float) -> ThermalThrottle:
    """Whether any performance-limiting clock event was seen, which, for how long, max temperature."""
    kinds: set[str] = set()
    throttled = 0
    for sample in samples:
        found = throttle_kinds(sample.throttle_reasons or 0)
        if found:
            kinds.update(found)
            throttled += 1
    devices = {s.gpu_index for s in samples} or {0}
    return ThermalThrottle(
        detected=bool(kinds),
        kinds=sorted(kinds),
        seconds=throttled * interval_s / len(devices),
        max_temperature_c=_max([s.temperature_c for s in samples]),
    )
