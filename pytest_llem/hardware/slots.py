"""Slots: which GPUs and cores each of several worker processes gets, so that no two share one.

Planned by the pytest-xdist controller (`pytest_llem.plugin.slots`), applied in each worker.
GPUs are named as `CUDA_VISIBLE_DEVICES` entries taken from the caller's visible devices;
cores are equal, disjoint shares of the cores the caller may use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GPUS_FLAG = "--llem-gpus-per-worker"


@dataclass(frozen=True)
class Slot:
    """What one xdist worker may use: `gpus` are CUDA_VISIBLE_DEVICES entries (None: GPUs not
    split, the option was not given), `cores` the CPU cores (empty when they are not split).
    `problem` says why experiments cannot run on this worker."""

    worker: str
    workers: int
    gpus: tuple[str, ...] | None
    cores: tuple[int, ...]
    problem: str | None = None

    def to_input(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "workers": self.workers,
            "gpus": None if self.gpus is None else list(self.gpus),
            "cores": list(self.cores),
            "problem": self.problem,
        }

    @classmethod
    def from_input(cls, data: Mapping[str, Any]) -> Slot:
        gpus = data.get("gpus")
        return cls(
            worker=str(data["worker"]),
            workers=int(data["workers"]),
            gpus=None if gpus is None else tuple(str(g) for g in gpus),
            cores=tuple(int(c) for c in data.get("cores", ())),
            problem=data.get("problem"),
        )


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs the caller may use, as CUDA_VISIBLE_DEVICES entries: the variable's own entries
    up to the first invalid one (where CUDA stops too), else every NVML board by UUID (UUIDs,
    because CUDA's default order need not be NVML's)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        entries = []
        for entry in (part.strip() for part in value.split(",")):
            if not entry or entry.startswith("-"):
                break
            entries.append(entry)
        return entries
    from pytest_llem.hardware import nvml_devices

    session = nvml_devices.open_session()
    if session is None:
        return []
    return [device.uuid() or str(device.nvml_index) for device in session.visible_devices()]


def _ranges(cores: Sequence[int]) -> str:
    return ",".join(map(str, cores)) if len(cores) <= 8 else f"{cores[0]}-{cores[-1]} ({len(cores)})"


def plan_slots(
    workers: Sequence[str], per_worker: int | None, gpus: Sequence[str], cores: Sequence[int]
) -> list[Slot]:
    """One slot per worker, in order: disjoint GPU entries and disjoint equal shares of
    `cores` (the remainder stays with the controller and the rest of the machine)."""
    count = len(workers)
    problem = None
    if count > len(cores):
        problem = (
            f"pytest-llem gives each xdist worker cores of its own, and {count} workers need {count} "
            f"cores; this process may use {len(cores)} ({_ranges(cores)}): run with -n {len(cores)} or "
            "fewer, or -n auto"
        )
    elif per_worker is None and gpus and count > 1:
        problem = (
            f"pytest-llem under xdist on a machine with {len(gpus)} visible GPU(s) needs "
            f"{GPUS_FLAG} N, so that no two workers share a GPU (0 for CPU-only experiments), e.g. "
            f"-n auto {GPUS_FLAG} 1"
        )
    elif per_worker is not None and per_worker * count > len(gpus):
        problem = (
            f"{GPUS_FLAG}={per_worker} with {count} xdist workers needs {per_worker * count} GPUs; "
            f"{len(gpus)} are visible ({','.join(gpus) or 'none'}): lower -n or {GPUS_FLAG}, or "
            "use -n auto (one worker per slot)"
        )
    share = len(cores) // count if count else 0
    slots = []
    for k, worker in enumerate(workers):
        slot_gpus = None if per_worker is None else tuple(gpus[k * per_worker : (k + 1) * per_worker])
        slot_cores = tuple(cores[k * share : (k + 1) * share]) if problem is None else ()
        slots.append(Slot(worker, count, slot_gpus if problem is None else None, slot_cores, problem))
    return slots


def usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_all_threads(cores: set[int]) -> None:
    """Every thread of this process (a thread pool started earlier too) and whatever it starts
    later, on `cores`: Linux affinity is per thread, so pinning only the caller would leave
    torch's existing pool free to run on another worker's cores."""
    try:
        tasks = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        tasks = [0]
    for tid in tasks:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # the thread ended meanwhile
            continue
