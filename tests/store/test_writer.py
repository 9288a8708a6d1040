"""The one report writer: each record is one appended line (the 300th costs what the first
did), the report is whole at the end, and a killed session still leaves every finished
experiment readable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest
from factories import make_result

from pytest_llem.schema.config import build_config
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult, SessionReport
from pytest_llem.store import writer as writer_module
from pytest_llem.store.report import PARQUET_NAME, lines_path, new_report, read_report, write_report
from pytest_llem.store.writer import ReportWriter

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
CONFIG = build_config(("test", {"model": "tiny"}))


def _header() -> SessionReport:
    environment = EnvironmentSnapshot(python="3", platform="linux", tool_version="0")
    return new_report(environment, WHEN, "fp", "run-1")


def _result(k: int) -> ExperimentResult:
    return make_result(f"t.py::test[{k}]", config=CONFIG, config_hash="h", output_tokens=k)


def test_records_are_appended_and_the_report_is_written_whole_once_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole_writes: list[int] = []
    real = write_report

    def counting(report: SessionReport, path: Path) -> None:
        whole_writes.append(len(report.experiments))
        real(report, path)

    monkeypatch.setattr(writer_module, "write_report", counting)
    path = tmp_path / "report.json"
    writer = ReportWriter(_header(), path)
    for k in range(30):
        assert writer.add_experiment(_result(k)) is None
    writer.add_figure(BenchmarkFigure(nodeid="t.py::b", name="overhead", value=1.01))
    assert whole_writes == [0]  # the header, once: appending never rewrites the report
    assert len(lines_path(path).read_text().splitlines()) == 31
    midway = read_report(path)  # readable while the session runs
    assert [r.output_tokens for r in midway.experiments] == list(range(30))
    assert midway.completed is False and [f.name for f in midway.figures] == ["overhead"]

    assert writer.finish(completed=True) is None
    assert not lines_path(path).exists()  # compacted
    final = read_report(path)
    assert final.completed is True and len(final.experiments) == 30 and len(final.figures) == 1
    assert (tmp_path / PARQUET_NAME).is_file()


def test_a_line_cut_short_by_a_kill_is_left_out_and_the_rest_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    writer = ReportWriter(_header(), path)
    writer.add_experiment(_result(1))
    writer.add_experiment(_result(2))
    with open(lines_path(path), "a") as stream:
        stream.write('{"experiment": {"nodeid": "t.py::cut')  # killed mid-line
    assert [r.output_tokens for r in read_report(path).experiments] == [1, 2]


def test_a_compacted_report_ignores_lines_left_by_a_crash_between_compaction_and_removal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "report.json"
    writer = ReportWriter(_header(), path)
    writer.add_experiment(_result(1))
    lines = lines_path(path).read_text()
    writer.finish(completed=True)
    lines_path(path).write_text(lines)  # as if the removal had not happened
    assert len(read_report(path).experiments) == 1


def test_a_failing_append_is_one_error_and_every_result_is_kept_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    writer = ReportWriter(_header(), blocker / "report.json")
    error = writer.add_experiment(_result(1))
    assert error is not None and "cannot write the report" in error
    assert writer.add_experiment(_result(2)) is None  # reported once
    kept = Path(error.rsplit("kept in ", 1)[1])
    assert [r.output_tokens for r in read_report(kept).experiments] == [1, 2]


SLOW_SESSION = """
import os, signal
import pytest

SETTINGS = dict(model="tiny", max_new_tokens=2, n_prompts=1, energy={"meter": "estimate", "baseline_s": 0},
                warmup=0, repeats=1)

@pytest.mark.parametrize("k", range(3))
@pytest.mark.llem(**SETTINGS)
def test_experiment(llem, k):
    llem.run()

def test_killed():
    os.kill(os.getpid(), signal.SIGKILL)  # no hook runs after this: no compaction, no summary
"""


def test_a_session_killed_with_sigkill_leaves_every_finished_experiment_readable(tmp_path: Path) -> None:
    (tmp_path / "test_killed.py").write_text(textwrap.dedent(SLOW_SESSION))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-q",
            "test_killed.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-2000:]
    (report_path,) = (tmp_path / ".llem" / "runs").glob("*/report.json")
    report = read_report(report_path)
    assert report.completed is False
    assert sorted(r.nodeid.split("::")[1] for r in report.experiments) == [
        f"test_experiment[{k}]" for k in range(3)
    ]
    assert all(r.status == "passed" for r in report.experiments)
    assert json.loads(report_path.read_text())["experiments"] == []  # the header; the rest is in the lines


@pytest.mark.parametrize("size", [1, 5])
def test_the_cost_of_an_append_does_not_depend_on_the_session_so_far(tmp_path: Path, size: int) -> None:
    # structural, not timed: an append writes one line, never the experiments before it
    path = tmp_path / "report.json"
    writer = ReportWriter(_header(), path)
    for k in range(size):
        writer.add_experiment(_result(k))
    before = path.stat().st_mtime_ns, lines_path(path).stat().st_size
    writer.add_experiment(_result(99))
    after = path.stat().st_mtime_ns, lines_path(path).stat().st_size
    assert after[0] == before[0]  # report.json untouched
    one_line = len(json.dumps({"experiment": json.loads(_result(99).model_dump_json()), "figure": None}))
    assert after[1] - before[1] < 2 * one_line
