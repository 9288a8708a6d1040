"""Trend across stored runs: J/token and tokens/s of each experiment, run by run, in the order
the runs were made, with the commit each one measured.

Read by `llem trend` (a table) and by the HTML report (a chart). A run appears once however
it is reached (its report's `run_id`), and interrupted runs are left out. By default only runs
from one machine fingerprint are put side by side: energy figures from different machines are
not comparable.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from rich.markup import escape
from rich.table import Table

from pytest_llem.render.numbers import ESTIMATE_DIGITS, significant
from pytest_llem.render.summary import table_text
from pytest_llem.schema.results import SessionReport
from pytest_llem.store.report import ReportError, read_report
from pytest_llem.store.runs import RunStore


@dataclass(frozen=True)
class TrendRun:
    """One stored session, as a point on the trend's x axis."""

    name: str
    created_at: str
    commit: str | None
    dirty: bool | None
    fingerprint: str | None

    @property
    def commit_label(self) -> str:
        return (self.commit or "nogit")[:8] + ("-dirty" if self.dirty else "")

    @property
    def label(self) -> str:
        """Commit, then month-day and time on a second line: short enough for an axis tick."""
        return f"{self.commit_label}\n{self.created_at[5:16].replace('T', ' ')}"


@dataclass(frozen=True)
class TrendPoint:
    """One experiment in one run."""

    run: TrendRun
    nodeid: str
    config_hash: str
    energy_label: str
    energy_per_output_token_j: float | None
    energy_ci95: tuple[float | None, float | None]
    tokens_per_second: float
    tokens_per_second_ci95: tuple[float | None, float | None]


def _run_of(name: str, report: SessionReport) -> TrendRun:
    return TrendRun(
        name=report.run_id or name,
        created_at=report.created_at,
        commit=report.environment.git_commit,
        dirty=report.environment.git_dirty,
        fingerprint=report.fingerprint,
    )


def trend_points(reports: Sequence[tuple[str, SessionReport]]) -> tuple[list[TrendRun], list[TrendPoint]]:
    """Runs in order of `created_at` (copies of one session once) and their passed experiments."""
    runs: dict[tuple[str, str], tuple[TrendRun, SessionReport]] = {}
    for name, report in reports:
        run = _run_of(name, report)
        runs.setdefault((run.name, run.created_at), (run, report))
    ordered = sorted(runs.values(), key=lambda pair: (pair[0].created_at, pair[0].name))
    points = []
    for run, report in ordered:
        for result in report.experiments:
            if result.status != "passed":
                continue
            energy = result.stats.get("energy_per_output_token_j")
            speed = result.stats.get("tokens_per_second")
            points.append(
                TrendPoint(
                    run=run,
                    nodeid=result.nodeid,
                    config_hash=result.config_hash,
                    energy_label=result.energy_label,
                    energy_per_output_token_j=result.energy_per_output_token_j,
                    energy_ci95=(energy.ci95_low, energy.ci95_high) if energy else (None, None),
                    tokens_per_second=result.tokens_per_second,
                    tokens_per_second_ci95=(speed.ci95_low, speed.ci95_high) if speed else (None, None),
                )
            )
    return [run for run, _ in ordered], points


def stored_reports(
    store: RunStore, fingerprint: str | None = None, last: int | None = None
) -> list[tuple[str, SessionReport]]:
    """Stored runs (optionally of one machine), oldest first; the newest `last` when given."""
    reports = []
    for stored in store.list_runs():
        if (fingerprint is not None and stored.fingerprint != fingerprint) or stored.completed is False:
            continue  # another machine, or a session interrupted (or still running)
        try:
            reports.append((stored.name, read_report(stored.path)))
        except ReportError:
            continue
    if last is not None:
        kept = {run.name for run in trend_points(reports)[0][-last:]} if last > 0 else set()
        reports = [(name, report) for name, report in reports if (report.run_id or name) in kept]
    return reports


def newest_fingerprint(store: RunStore) -> str | None:
    """The machine of the newest complete stored run."""
    runs = [run for run in store.list_runs() if run.completed is not False]
    return runs[-1].fingerprint if runs else None


def _milli(value: float | None, estimated: bool = False) -> str:
    if value is None:
        return "-"
    return significant(value * 1000, ESTIMATE_DIGITS) if estimated else f"{value * 1000:.3f}"


def _interval(
    low: float | None, high: float | None, scale: float, digits: int, estimated: bool = False
) -> str:
    """`digits` decimals; an estimate: at most 3 significant digits (figures.py)."""
    if low is None or high is None:
        return ""
    if estimated:
        return f" [{significant(low * scale, ESTIMATE_DIGITS)}, {significant(high * scale, ESTIMATE_DIGITS)}]"
    return f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def _change(previous: float | None, current: float | None) -> str:
    if previous is None or current is None or previous == 0:
        return ""
    return f"{(current / previous - 1) * 100:+.1f}%"


def trend_table(points: Sequence[TrendPoint], title: str) -> Table:
    """One block of rows per experiment, one row per run, with the change from the run before."""
    table = Table(title=title, title_justify="left")
    for header, justify in (
        ("test", "left"),
        ("run created (UTC)", "left"),
        ("commit", "left"),
        ("mJ/out-token [95% CI]", "right"),
        ("Δ", "right"),
        ("tok/s [95% CI]", "right"),
        ("Δ", "right"),
        ("note", "left"),
    ):
        table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
    by_test: dict[str, list[TrendPoint]] = {}
    for point in points:
        by_test.setdefault(point.nodeid, []).append(point)
    for nodeid, series in by_test.items():
        previous: TrendPoint | None = None
        for index, point in enumerate(series):
            notes = []
            estimated = point.energy_label == "estimated"
            if estimated:
                notes.append("estimated")
            if previous is not None and previous.config_hash != point.config_hash:
                notes.append("config changed")
            table.add_row(
                escape(nodeid.split("::", 1)[-1]) if index == 0 else "",
                point.run.created_at[:19].replace("T", " "),
                escape(point.run.commit_label),
                _milli(point.energy_per_output_token_j, estimated)
                + _interval(*point.energy_ci95, 1000, 3, estimated),
                _change(
                    previous.energy_per_output_token_j if previous else None, point.energy_per_output_token_j
                ),
                f"{point.tokens_per_second:.1f}" + _interval(*point.tokens_per_second_ci95, 1, 1),
                _change(previous.tokens_per_second if previous else None, point.tokens_per_second),
                ", ".join(notes),
            )
            previous = point
        table.add_section()
    return table


def render_trend(points: Sequence[TrendPoint], title: str, width: int = 160) -> str:
    return table_text(trend_table(points, title), width)


def _json_rows(points: Sequence[TrendPoint]) -> list[dict[str, object]]:
    rows = []
    for point in points:
        row = asdict(point)
        run = row.pop("run")
        rows.append(
            {
                "run_id": run["name"],
                "created_at": run["created_at"],
                "commit": run["commit"],
                "dirty": run["dirty"],
                "fingerprint": run["fingerprint"],
                **row,
            }
        )
    return rows


def trend_command(args: argparse.Namespace, store: RunStore, emit: Callable[[str, str | None], None]) -> int:
    """`llem trend`: the table (or JSON) of every experiment across the stored runs."""
    if args.last is not None and args.last < 1:
        raise ValueError(f"--last={args.last}: expected a positive number of runs")
    fingerprint = None if args.all_machines else newest_fingerprint(store)
    runs, points = trend_points(stored_reports(store, fingerprint, args.last))
    if args.format == "json":
        emit(json.dumps(_json_rows(points), indent=2) + "\n", args.output)
        return 0
    if not runs:
        emit(f"no complete stored runs under {store.runs_dir}\n", args.output)
        return 0
    machine = "all machines" if fingerprint is None else f"machine {fingerprint}"
    title = f"{len(runs)} run(s) under {store.runs_dir}, {machine}; energy per output token and throughput"
    emit(render_trend(points, title), args.output)
    return 0
