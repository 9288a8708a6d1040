"""Shards: one machine of many runs a deterministic share of the collected tests.

`--llem-shard I/N` keeps test number k of the collected tests (sorted by test id) when
k mod N = I - 1, and deselects the rest: every test lands in exactly one shard, whatever the
machine, and a shard's share does not depend on which other shards run. Under a Slurm job
array the shard comes from `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN` and
`SLURM_ARRAY_TASK_COUNT` by itself; a Kubernetes Indexed Job gives `JOB_COMPLETION_INDEX`
(0-based) and the count with `--llem-shard auto/N`. The shard is recorded in the report
(`shard`), so `llem merge` can name a shard that is missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

_SHARD = re.compile(r"^\s*(\d+|auto)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int
    source: str  # where it came from, for messages

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def keeps(self, position: int) -> bool:
        return position % self.count == self.index - 1


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


class ShardPlugin:
    """Registered only when a shard is set: deselects the other shards' tests."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection: the shard splits what is left
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        order = {nodeid: position for position, nodeid in enumerate(sorted(item.nodeid for item in items))}
        kept = [item for item in items if self.shard.keeps(order[item.nodeid])]
        others = [item for item in items if not self.shard.keeps(order[item.nodeid])]
        if others:
            config.hook.pytest_deselected(items=others)
        items[:] = kept

    def pytest_report_header(self, config: pytest.Config) -> str:
        return f"llem shard: {self.shard} (from {self.shard.source})"
