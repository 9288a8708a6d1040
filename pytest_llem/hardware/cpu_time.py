"""CPU time of this process tree and of the whole machine, and how much of it others used.

The `estimate` meter turns CPU seconds into joules, so it must count every process that does
the inference: vLLM runs its engine core in a child process, so the tree (this process, its
live descendants, and the children it has already reaped) is counted, not this process alone.

The same counters tell whether the window was shared: the machine's busy time (from
`/proc/stat`) minus this tree's CPU time is what other processes used. A busy machine changes
an estimated figure (spin-waiting worker threads burn more CPU while they wait for a core), so a
window where others held more than `CONTENTION_SHARE` of the machine's capacity is flagged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

# Other processes' share of the machine's CPU capacity above which a window is flagged. 10%: on
# a 2-core machine, one competing process busy for a fifth of the window; below it the spread
# of repeated estimates on a quiet machine dominates.
CONTENTION_SHARE = 0.10
PROC_STAT = Path("/proc/stat")


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.clock_getcpuclockid.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


# Live descendants whose work is not this tree's: A/B mode's base worker is a child of the head
# but measures its own windows, so the head's estimate must not count it (pytest_llem.plugin.ab).
_NOT_OURS: set[int] = set()


def exclude_from_tree(pid: int) -> None:
    """Leave process `pid` and its descendants out of `process_tree_cpu_s()`."""
    _NOT_OURS.add(pid)


def include_in_tree(pid: int) -> None:
    _NOT_OURS.discard(pid)


def _ours(descendants: list[psutil.Process]) -> list[psutil.Process]:
    """`descendants` less the excluded processes and theirs. psutil lists a parent before its
    children, so one pass suffices, and it reads nothing more than each excluded subtree's
    parent ids: the reading sits at a window's edge, and an A/B head that spent longer on it
    than the base would look slower (a full second scan of /proc cost about 1 ms, 1-2% of a
    0.1 s window)."""
    if not _NOT_OURS:
        return descendants
    skipped = set(_NOT_OURS)
    kept = []
    for process in descendants:
        if process.pid in skipped:
            continue
        try:
            parent = process.ppid()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if parent in skipped:
            skipped.add(process.pid)
        else:
            kept.append(process)
    return kept


def _process_cpu_clock(pid: int) -> int | None:
    """The kernel's CPU-time clock of process `pid` (`clock_getcpuclockid`), which reads like
    that process's own `time.process_time()`: every thread, exited ones included, in
    nanoseconds. None where libc has no such call (not Linux/POSIX)."""
    if _libc is None:
        return None
    clock = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        return None
    return clock.value


def _descendant_cpu_s(process: psutil.Process) -> float | None:
    """A live descendant's CPU seconds: from its CPU-time clock where it can be read (an engine
    host does all of an isolated experiment's work, so 10 ms /proc ticks would be a 1% step in a
    1 s window), else from /proc's ticks; None once it is gone."""
    clock = _process_cpu_clock(process.pid)
    if clock is not None:
        try:
            return time.clock_gettime(clock)
        except OSError:
            pass  # exited since: the ticks below say so too
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


def process_tree_cpu_s() -> float:
    """User + system CPU seconds of this process (every thread, from `time.process_time()`,
    nanosecond resolution), of the children it has already waited for (`os.times()`: their
    time includes their own reaped descendants) and of its live descendants (each one's CPU-time
    clock, also in nanoseconds; /proc's 10 ms ticks where that clock cannot be read), less those
    excluded with `exclude_from_tree`. A descendant that exits and is reaped between two
    readings moves from the live sum to the reaped sum, so a difference of two readings stays
    right."""
    reaped = os.times()
    total = time.process_time() + reaped.children_user + reaped.children_system
    for child in _ours(psutil.Process().children(recursive=True)):
        seconds = _descendant_cpu_s(child)
        if seconds is not None:  # None: gone between listing and reading, now in the reaped sum
            total += seconds
    return total


@dataclass(frozen=True)
class MachineCpu:
    """Cumulative CPU seconds of the whole machine, summed over every CPU: busy and total."""

    busy_s: float
    total_s: float


def read_machine_cpu(proc_stat: Path = PROC_STAT) -> MachineCpu | None:
    """The aggregate `cpu` line of /proc/stat; None where it cannot be read (not Linux).

    Busy = user + nice + system + irq + softirq + steal (guest time is already inside user);
    total adds idle and iowait.
    """
    try:
        first = proc_stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu" or len(first) < 5:
        return None
    ticks = [int(value) for value in first[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = ticks + [0] * (8 - len(ticks))
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq + steal
    return MachineCpu(busy_s=busy / hz, total_s=(busy + idle + iowait) / hz)


@dataclass(frozen=True)
class CpuSnapshot:
    """One reading of the counters, taken at a window's start or end."""

    wall_s: float
    tree_cpu_s: float
    machine: MachineCpu | None


def take_snapshot() -> CpuSnapshot:
    return CpuSnapshot(time.perf_counter(), process_tree_cpu_s(), read_machine_cpu())


def others_share(start: CpuSnapshot, end: CpuSnapshot) -> float | None:
    """Share of the machine's CPU capacity that other processes used between two snapshots:
    (machine busy time - this tree's CPU time) / machine capacity. None where /proc/stat is
    unreadable or no time passed. Clamped at 0: the two counters tick independently."""
    if start.machine is None or end.machine is None:
        return None
    capacity = end.machine.total_s - start.machine.total_s
    if capacity <= 0:
        return None
    busy = end.machine.busy_s - start.machine.busy_s
    tree = end.tree_cpu_s - start.tree_cpu_s
    return max(0.0, (busy - tree) / capacity)
