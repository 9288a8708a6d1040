"""Shards: one machine of many runs a deterministic share of the collected tests.

`--llem-shard I/N` splits the collected tests (after -k/-m) into N shares and keeps share I:
every test lands in exactly one shard, whatever the machine, and a shard's share does not
depend on which other shards run. With the test durations of an earlier report
(`--llem-shard-durations REPORT`, else the newest complete stored run that was not itself a
shard) the shares are balanced by time: longest test first, each to the shard with the least
time so far (ties to the lower shard, then by test id), a test the report does not know
counting as its median test. Without one, test number k (by test id) goes to shard
k mod N + 1. Every shard must see the same report, so the choice is made once per session
(the xdist controller hands it to its workers) and recorded (`shard_balanced_by`); `llem
merge` says so when shards were balanced by different reports. Under a Slurm job
array the shard comes from `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN` and
`SLURM_ARRAY_TASK_COUNT` by itself; a Kubernetes Indexed Job gives `JOB_COMPLETION_INDEX`
(0-based) and the count with `--llem-shard auto/N`. The shard is recorded in the report
(`shard`), so `llem merge` can name a shard that is missing.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

_SHARD = re.compile(r"^\s*(\d+|auto)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int
    source: str  # where it came from, for messages

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _checked(index: int, count: int, source: str) -> Shard:
    if count < 1 or not 1 <= index <= count:
        raise pytest.UsageError(
            f"{source}: shard {index}/{count} is invalid: expected I/N with 1 <= I <= N, e.g. --llem-shard 2/4"
        )
    return Shard(index, count, source)


def resolve_shard(option: str | None, environ: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard this process runs: `--llem-shard`, else a Slurm job array's task, else none."""
    if option is not None:
        match = _SHARD.match(option)
        if match is None:
            raise pytest.UsageError(
                f"--llem-shard={option!r} is invalid: expected I/N (e.g. 2/4) or auto/N (the index from "
                "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)"
            )
        first, count = match.group(1), int(match.group(2))
        if first != "auto":
            return _checked(int(first), count, f"--llem-shard={option}")
        if environ.get("SLURM_ARRAY_TASK_ID", "").isdigit():
            offset = int(environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
            return _checked(int(environ["SLURM_ARRAY_TASK_ID"]) - offset + 1, count, "SLURM_ARRAY_TASK_ID")
        if environ.get("JOB_COMPLETION_INDEX", "").isdigit():
            return _checked(int(environ["JOB_COMPLETION_INDEX"]) + 1, count, "JOB_COMPLETION_INDEX")
        raise pytest.UsageError(
            f"--llem-shard={option}: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set; "
            "give the shard as I/N"
        )
    task, total = environ.get("SLURM_ARRAY_TASK_ID", ""), environ.get("SLURM_ARRAY_TASK_COUNT", "")
    if task.isdigit() and total.isdigit():
        offset = int(environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        return _checked(int(task) - offset + 1, int(total), "SLURM_ARRAY_TASK_ID")
    return None


def balanced_shards(test_ids: Sequence[str], durations: Mapping[str, float], count: int) -> dict[str, int]:
    """Each test's shard (1-based), longest first to the least-loaded shard; deterministic."""
    known = [durations[test] for test in test_ids if test in durations]
    typical = statistics.median(known) if known else 1.0
    loads = [0.0] * count
    shards = {}
    for test in sorted(test_ids, key=lambda t: (-durations.get(t, typical), t)):
        chosen = min(range(count), key=lambda k: (loads[k], k))
        shards[test] = chosen + 1
        loads[chosen] += durations.get(test, typical)
    return shards


def durations_source(store_root: Path, reference: str | None) -> Path | None:
    """The report whose test durations balance the shards: `reference` (a report, run
    directory or stored run name), else the newest complete stored run that was no shard and
    recorded durations; None when there is none (the shards then split by test id)."""
    from pytest_llem.store.report import ReportError, read_report
    from pytest_llem.store.runs import RunStore

    store = RunStore(store_root)
    if reference is not None:
        try:
            return store.resolve(reference)
        except ReportError as exc:
            raise pytest.UsageError(f"--llem-shard-durations={reference}: {exc}") from None
    for run in reversed(store.list_runs()):
        if run.completed is not True:
            continue
        try:
            report = read_report(run.path)
        except (ReportError, ValueError):
            continue
        if report.shard is None and report.test_durations_s:
            return run.path
    return None


def stored_durations(source: Path) -> dict[str, float]:
    from pytest_llem.store.report import ReportError, read_report

    try:
        return dict(read_report(source).test_durations_s)
    except (ReportError, ValueError) as exc:
        raise pytest.UsageError(f"--llem-shard-durations: cannot read {source}: {exc}") from None


class ShardPlugin:
    """Registered only when a shard is set: deselects the other shards' tests."""

    def __init__(self, shard: Shard, durations: Mapping[str, float] | None = None) -> None:
        self.shard = shard
        self.durations = durations

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection: the shard splits what is left
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        ids = sorted(item.nodeid for item in items)
        if self.durations:
            shard_of = balanced_shards(ids, self.durations, self.shard.count)
        else:
            shard_of = {nodeid: position % self.shard.count + 1 for position, nodeid in enumerate(ids)}
        kept = [item for item in items if shard_of[item.nodeid] == self.shard.index]
        others = [item for item in items if shard_of[item.nodeid] != self.shard.index]
        if others:
            config.hook.pytest_deselected(items=others)
        items[:] = kept

    def pytest_report_header(self, config: pytest.Config) -> str:
        how = "balanced by earlier durations" if self.durations else "by test id"
        return f"llem shard: {self.shard} (from {self.shard.source}), {how}"
