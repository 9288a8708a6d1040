"""`llem trend` and `llem report` over stored runs written by hand (exact, no measuring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import make_result

from pytest_llem.cli.commands import main
from pytest_llem.render.trend import trend_points
from pytest_llem.schema.config import build_config
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.results import EnergyInfo, ExperimentResult, SessionReport, Stats
from pytest_llem.store.report import REPORT_NAME, write_report

MEASURED = EnergyInfo(source="rapl", measured=True, method="counter delta")
ESTIMATED = EnergyInfo(source="estimate", measured=False, method="cpu-time model")


def _experiment(nodeid: str, j_per_token: float, tokens_per_s: float, **fields: object) -> ExperimentResult:
    config = build_config(("test", {"model": "tiny", "batch_size": fields.pop("batch_size", 1)}))
    spread = Stats(
        n=3, mean=j_per_token, std=0.0, cv=0.0, ci95_low=j_per_token * 0.9, ci95_high=j_per_token * 1.1
    )
    values: dict[str, object] = {
        "tokens_per_second": tokens_per_s,
        "energy_per_output_token_j": j_per_token,
        "energy": MEASURED,
        "stats": {"energy_per_output_token_j": spread},
    }
    values.update(fields)
    return make_result(nodeid, config=config, **values)


def _store(
    root: Path,
    name: str,
    created_at: str,
    commit: str,
    experiments: list[ExperimentResult],
    fingerprint: str = "machine-a",
    completed: bool = True,
) -> SessionReport:
    report = SessionReport(
        tool_version="0.1.0",
        created_at=created_at,
        run_id=name,
        completed=completed,
        fingerprint=fingerprint,
        environment=EnvironmentSnapshot(
            python="3.11", platform="Linux", tool_version="0.1.0", git_commit=commit
        ),
        experiments=experiments,
    )
    write_report(report, root / ".llem" / "runs" / name / REPORT_NAME)
    return report


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three runs of one machine (the newest stored first on disk), one of another, one interrupted."""
    monkeypatch.chdir(tmp_path)
    _store(
        tmp_path,
        "z-oldest",
        "2026-11-01T09:00:00+00:00",
        "1" * 40,
        [_experiment("t.py::test_a", 0.010, 100.0)],
    )
    _store(
        tmp_path,
        "b-middle",
        "2026-11-02T09:00:00+00:00",
        "2" * 40,
        [
            _experiment("t.py::test_a", 0.012, 80.0),
            _experiment("t.py::test_b", 0.5, 10.0, energy=ESTIMATED),
            _experiment("t.py::test_broken", 0.1, 1.0, status="error", error="boom"),
        ],
    )
    _store(
        tmp_path,
        "a-newest",
        "2026-11-03T09:00:00+00:00",
        "3" * 40,
        [
            _experiment("t.py::test_a", 0.009, 110.0, batch_size=2),
            _experiment("t.py::test_b", 0.4, 12.0, energy=ESTIMATED),
        ],
    )
    _store(
        tmp_path,
        "other-machine",
        "2026-11-02T12:00:00+00:00",
        "4" * 40,
        [_experiment("t.py::test_a", 1.0, 1.0)],
        "machine-b",
    )
    _store(
        tmp_path,
        "interrupted",
        "2026-11-03T10:00:00+00:00",
        "5" * 40,
        [_experiment("t.py::test_a", 9.0, 1.0)],
        completed=False,
    )
    return tmp_path


def _lines(out: str, test: str) -> list[str]:
    """The table rows of one test: its first row names it, the rest follow until the next block."""
    rows, inside = [], False
    for line in out.splitlines():
        if test in line:
            inside = True
        elif inside and ("test_" in line or not line.strip() or set(line.strip()) <= set("─┼┴└┘├┤ ")):
            break
        if inside:
            rows.append(line)
    return rows


def test_trend_points_follow_creation_time_and_count_a_run_once() -> None:
    def report(run_id: str, created: str) -> SessionReport:
        return SessionReport(
            tool_version="0",
            created_at=created,
            run_id=run_id,
            environment=EnvironmentSnapshot(python="3", platform="L", tool_version="0"),
            experiments=[_experiment("t.py::test_a", 0.01, 1.0)],
        )

    late, early = report("late", "2026-02-01T00:00:00"), report("early", "2026-01-01T00:00:00")
    runs, points = trend_points([("late", late), ("early", early), ("late-copy", late)])
    assert [run.name for run in runs] == ["early", "late"]
    assert [point.run.name for point in points] == ["early", "late"]


def test_llem_trend_table_orders_runs_by_time_per_experiment(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trend"]) == 0
    out = capsys.readouterr().out
    assert "3 run(s)" in out and "machine machine-a" in out
    a_rows = _lines(out, "test_a")
    assert [row.split("│")[3].strip() for row in a_rows] == ["11111111", "22222222", "33333333"]
    assert "10.000 [9.000, 11.000]" in a_rows[0] and "+20.0%" in a_rows[1] and "-25.0%" in a_rows[2]
    assert "config changed" in a_rows[2]  # batch size 2 in the newest run
    b_rows = _lines(out, "test_b")
    assert len(b_rows) == 2 and all("estimated" in row for row in b_rows)
    assert "test_broken" not in out and "44444444" not in out and "55555555" not in out


def test_llem_trend_options(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trend", "--all-machines", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["run_id"] for row in rows if row["nodeid"] == "t.py::test_a"] == [
        "z-oldest",
        "b-middle",
        "other-machine",
        "a-newest",
    ]
    assert main(["trend", "--last", "1", "--format", "json"]) == 0
    assert {row["run_id"] for row in json.loads(capsys.readouterr().out)} == {"a-newest"}
    assert main(["trend", "--last", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--last=0" in err


def test_llem_trend_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(tmp_path / ".llem"), "trend"]) == 0
    assert "no complete stored runs" in capsys.readouterr().out


def test_llem_report_writes_html_with_the_trend_up_to_that_run(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "b-middle", "-o", "out/middle.html"]) == 0
    html = (runs / "out" / "middle.html").read_text(encoding="utf-8")
    assert "Trend across 2 stored runs" in html  # z-oldest and b-middle, not the newer one
    assert 'data-chart="trend-energy"' in html and 'class="badge est">estimated' in html
    (runs / "a-file").write_text("")
    assert main(["report", "b-middle", "-o", "a-file/x.html"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llem: --output=a-file/x.html: cannot write") and err.count("\n") == 1
