"""Writing the report costs the same for the 300th experiment as for the first.

Sessions of 25, 100 and 300 trivial experiments (records built in memory, nothing measured)
go through the one report writer the plugin and `llem run` use (`store.writer.ReportWriter`).
The cost of each append is timed; the figure per size is the median of the last tenth of the
session's appends (the late ones, where a whole-report rewrite would be slowest), and the
compaction at the end is recorded too. Figures are recorded, never asserted: on a shared VM a
timing belongs in the report.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from pytest_llem.plugin.fixture import LlemFixture
from pytest_llem.schema.config import build_config
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.results import ExperimentResult
from pytest_llem.store.report import new_report
from pytest_llem.store.writer import ReportWriter

SIZES = (25, 100, 300)
CONFIG = build_config(("benchmark", {"model": "tiny"}))


def _session(tmp_path: Path, size: int) -> tuple[list[float], float]:
    environment = EnvironmentSnapshot(python="3", platform="linux", tool_version="0")
    header = new_report(environment, datetime.now(timezone.utc), "fp", f"size-{size}")
    writer = ReportWriter(header, tmp_path / f"size-{size}" / "report.json")
    costs = []
    for k in range(size):
        result = ExperimentResult(
            nodeid=f"bench.py::test[{k}]", status="passed", config=CONFIG, config_hash="h", output_tokens=k
        )
        start = time.perf_counter()
        writer.add_experiment(result)
        costs.append(time.perf_counter() - start)
    start = time.perf_counter()
    writer.finish(completed=True)
    return costs, time.perf_counter() - start


def test_report_writes_cost_the_same_per_experiment_at_any_session_size(
    llem: LlemFixture, tmp_path: Path
) -> None:
    late = {}
    for size in SIZES:
        costs, compaction_s = _session(tmp_path, size)
        tail = costs[-max(1, size // 10) :]
        late[size] = statistics.median(tail)
        llem.record_figure(
            f"report append, session of {size}",
            late[size] * 1000,
            unit="ms",
            detail=f"median of the last {len(tail)} appends; all {size}: {sum(costs):.3f} s; compaction {compaction_s * 1000:.0f} ms",
        )
    llem.record_figure(
        "report append, 300th vs 25th session",
        late[300] / late[25],
        unit="x",
        at_most=1.5,
        detail="per-experiment write cost, session of 300 over session of 25",
    )
