"""Writing and reading session reports: JSON (the record) plus Parquet (for analysis).

Every write goes through `store.files.atomic_write`, so a reader (or a crash) never sees half a
report. While a session runs, its experiments are appended to `report.jsonl` beside the report
(`store.writer.ReportWriter`); `read_report` joins those lines to the header, so an interrupted
session keeps everything it measured.

The Parquet tables have explicit schemas: a column is typed even when every value in it is
null, so many runs read with one glob (duckdb, polars, pandas) without "String != Null".
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llem.store.files import atomic_write, write_text

if TYPE_CHECKING:  # the records load with the first report read or written, not at start-up
    import pyarrow as pa

    from pytest_llem.schema.environment import EnvironmentSnapshot
    from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult, SessionReport

REPORT_NAME = "report.json"
PARQUET_NAME = "experiments.parquet"


def experiments_schema() -> pa.Schema:
    """One row per experiment. Every column is typed, whatever the values (`store.columns`)."""
    import pyarrow as pa

    from pytest_llem.store.columns import columns  # not at start-up: the plugin imports this module

    return pa.schema([(column.name, column.arrow_type()) for column in columns()])


def experiment_row(result: ExperimentResult, report: SessionReport | None = None) -> dict[str, Any]:
    """One flat row per experiment for the Parquet table; run columns come from `report`."""
    from pytest_llem.store.columns import columns

    return {column.name: column.read(result, report) for column in columns()}


def experiments_table(report: SessionReport) -> pa.Table:
    import pyarrow as pa

    rows = [experiment_row(result, report) for result in report.experiments]
    return pa.Table.from_pylist(rows, schema=experiments_schema())


def write_report(report: SessionReport, path: Path) -> None:
    """Write report.json and, beside it, experiments.parquet; both atomically."""
    import pyarrow.parquet as pq

    text = report.model_dump_json(indent=2)
    table = experiments_table(report) if report.experiments else None
    write_text(path, text)
    if table is not None:
        atomic_write(path.parent / PARQUET_NAME, lambda tmp: pq.write_table(table, tmp))


def write_report_or_keep(report: SessionReport, path: Path) -> str | None:
    """Write the report; None on success, else the one-line error (see `keep_elsewhere`)."""
    try:
        write_report(report, path)
        return None
    except Exception as exc:  # any failure: disk, permissions, a value Parquet cannot hold
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return keep_elsewhere(report, f"cannot write the report {path} ({reason})")


def keep_elsewhere(report: SessionReport, problem: str) -> str:
    """Keep every result in a file in the temp directory (so a full disk, a vanished or
    read-only directory never loses a measurement); the one-line error names that file."""
    fallback = Path(tempfile.gettempdir()) / f"llem-{report.run_id or 'run'}-{os.getpid()}.json"
    try:
        write_text(fallback, report.model_dump_json(indent=2, fallback=str))
        kept = f"every measured result is kept in {fallback}"
    except Exception as exc:
        kept = f"the results could not be kept either ({fallback}: {exc})"
    return f"pytest-llem {problem}; {kept}"


class ReportError(ValueError):
    """A report file that cannot be read, with the path and the reason."""


def lines_path(report_path: Path) -> Path:
    """Where a running session appends its records: `report.jsonl` beside `report.json`."""
    return report_path.with_name(report_path.stem + ".jsonl")


def _appended(report: SessionReport, file: Path) -> SessionReport:
    """The report with the records a session appended before it was compacted (or killed).
    Only a header (no experiments yet) takes them: a compacted report already holds them. A
    last line cut short by a kill is left out."""
    from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult

    lines = lines_path(file)
    if report.experiments or not lines.is_file():
        return report
    experiments: list[ExperimentResult] = []
    figures: list[BenchmarkFigure] = []
    for text in lines.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(text)
        except ValueError:
            continue  # the line being written when the session was killed
        if isinstance(record, dict) and record.get("experiment") is not None:
            experiments.append(ExperimentResult.model_validate(record["experiment"]))
        if isinstance(record, dict) and record.get("figure") is not None:
            figures.append(BenchmarkFigure.model_validate(record["figure"]))
    return report.model_copy(update={"experiments": experiments, "figures": report.figures + figures})


def read_report(path: Path) -> SessionReport:
    """Read a report; a directory means its report.json. Refuses unknown schema versions and
    anything that is not a report, with the path and the reason in one line."""
    from pytest_llem.schema.results import SCHEMA_VERSION, SessionReport

    file = path / REPORT_NAME if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read report {file}: {exc}") from None
    if not isinstance(data, dict):
        raise ReportError(
            f"{file} is not a pytest-llem report: expected a JSON object, found {type(data).__name__}"
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"report {file} has schema_version={version!r}; this pytest-llem reads {SCHEMA_VERSION}"
        )
    try:
        return _appended(SessionReport.model_validate(data), file)
    except ValueError as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise ReportError(f"{file} is not a valid pytest-llem report: {detail}") from None


def new_report(
    environment: EnvironmentSnapshot,
    when: datetime,
    fingerprint: str | None,
    run_id: str,
    name: str | None = None,
) -> SessionReport:
    from pytest_llem.schema.results import SessionReport

    return SessionReport(
        tool_version=environment.tool_version,
        created_at=when.isoformat(),
        run_id=run_id,
        name=name,
        completed=False,
        fingerprint=fingerprint,
        environment=environment,
    )
