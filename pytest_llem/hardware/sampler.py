"""The one NVML poller per device set, and the 1 Hz timeseries it produces.

During a window a `DevicePoller` reads each GPU in use at `sample_hz` (default 10 Hz): power
always (and the energy counter, to see it reset), and, when the timeseries is wanted,
temperature, memory, utilisation and throttle reasons. The GPU energy meters own one and the
timeseries is built from the same samples, so a GPU is polled once per tick, not once per
consumer: at most `sample_hz` power reads per device per second. Ticks come from
`pytest_llem.hardware.clock`: a thread on real hardware, exact instants on a simulated clock.

Samples are bucketed into one row per (second, device) with the fixed schema below; unknown
values stay null, never zero. A device lost mid-window ends the poll with `DeviceLost`, raised
by `stop()`; a single failed read is a null for that read.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llem.hardware import clock as clocks
from pytest_llem.hardware.nvml_devices import NvmlDevice, throttle_kinds
from pytest_llem.schema.results import ThermalThrottle


@dataclass(frozen=True)
class Sample:
    time_s: float  # seconds on the current clock (pytest_llem.hardware.clock)
    gpu_index: int
    power_w: float | None
    temperature_c: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    sm_utilisation_pct: float | None
    throttle_reasons: int | None
    energy_mj: int | None = None  # the board's energy counter at this instant, where it has one
    nvml_index: int | None = None  # the board's number on the machine (gpu_index is CUDA's, in-process)


def read_sample(device: NvmlDevice, now_s: float, timeseries: bool = True, counter: bool = False) -> Sample:
    """One poll of one device: power (and the counter when asked); the rest for the timeseries."""
    power = device.power_w()
    energy = device.total_energy_mj() if counter else None
    if not timeseries:
        return Sample(
            now_s, device.cuda_index, power, None, None, None, None, None, energy, device.nvml_index
        )
    used, total = device.memory_used_total_mb()
    return Sample(
        time_s=now_s,
        gpu_index=device.cuda_index,
        power_w=power,
        temperature_c=device.temperature_c(),
        memory_used_mb=used,
        memory_total_mb=total,
        sm_utilisation_pct=device.utilisation_pct(),
        throttle_reasons=device.throttle_mask(),
        energy_mj=energy,
        nvml_index=device.nvml_index,
    )


class DevicePoller:
    """Polls a set of GPUs while a measurement window is open; `samples` holds every read.

    `counters` names the devices (by label) whose energy counter is read on each tick too;
    `timeseries=False` reads power (and counters) only, for a meter whose timeseries is off.
    """

    def __init__(
        self,
        devices: Sequence[NvmlDevice],
        sample_hz: float,
        timeseries: bool = True,
        counters: frozenset[str] = frozenset(),
    ) -> None:
        self.devices = list(devices)
        self.sample_hz = sample_hz
        self.timeseries = timeseries
        self._counters = counters
        self._lock = threading.Lock()
        self._ticker: clocks.Ticker | None = None
        self.samples: list[Sample] = []

    @property
    def has_sources(self) -> bool:
        return bool(self.devices)

    def _tick(self) -> None:
        now = clocks.current().now()
        read = [read_sample(d, now, self.timeseries, d.label in self._counters) for d in self.devices]
        with self._lock:
            self.samples.extend(read)

    def start(self) -> None:
        """Clear the samples and poll now, then every 1 / sample_hz seconds."""
        self.close()
        with self._lock:
            self.samples = []
        if not self.devices:
            return
        self._ticker = clocks.current().every(1.0 / self.sample_hz, self._tick, "llem-device-poller")
        self._ticker.start()

    def stop(self) -> list[Sample]:
        """Stop polling and return the samples; re-raises what ended the poll (`DeviceLost`)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
        with self._lock:
            return list(self.samples)

    def close(self) -> None:
        """Stop polling on an exit path that already has an error: never raises."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            with contextlib.suppress(Exception):  # the window's own error is the one to report
                ticker.stop()


TIMESERIES_COLUMNS = (
    ("timestamp_s", "float64"),
    ("gpu_index", "int32"),
    # the board's NVML index: the machine's number for it (nvidia-smi's), which differs from
    # gpu_index when CUDA_VISIBLE_DEVICES selects boards (an xdist worker's GPU slot)
    ("nvml_index", "int32"),
    ("power_w", "float32"),
    ("temperature_c", "float32"),
    ("memory_used_mb", "float32"),
    ("memory_total_mb", "float32"),
    ("sm_utilisation_pct", "float32"),
    ("throttle_reasons", "int64"),
    # which measurement window (repeat) the row's samples come from, and that window's
    # boundaries on the same time axis as timestamp_s; a second that straddles two windows
    # has one row per window
    ("repeat_index", "int32"),
    ("window_start_s", "float64"),
    ("window_end_s", "float64"),
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
                "nvml_index": group[0].nvml_index,
                "power_w": _mean([s.power_w for s in group]),
                "temperature_c": _mean([s.temperature_c for s in group]),
                "memory_used_mb": _max([s.memory_used_mb for s in group]),
                "memory_total_mb": _max([s.memory_total_mb for s in group]),
                "sm_utilisation_pct": _mean([s.sm_utilisation_pct for s in group]),
                "throttle_reasons": mask if masks else None,
            }
        )
    return rows


def bucket_windows(
    windows: Sequence[tuple[float, float, Sequence[Sample]]], origin_s: float
) -> list[dict[str, Any]]:
    """`bucket_per_second` per measurement window (start, end, samples), each row carrying
    its repeat index and the window's boundaries in seconds since `origin_s`."""
    rows = []
    for index, (start_s, end_s, samples) in enumerate(windows):
        for row in bucket_per_second(samples, origin_s):
            row.update(repeat_index=index, window_start_s=start_s - origin_s, window_end_s=end_s - origin_s)
            rows.append(row)
    return sorted(rows, key=lambda row: (row["timestamp_s"], row["gpu_index"], row["repeat_index"]))


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
