"""The self-contained HTML report: `--llem-html PATH` and `llem report RUN -o report.html`.

`svg` draws the charts, `timeseries` reads an experiment's Parquet back, `page` lays out the
report. The file is written atomically and needs no network (and no script) to open.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pytest_llem.render.html.page import render_page
from pytest_llem.render.trend import stored_reports
from pytest_llem.schema.results import SessionReport
from pytest_llem.store.files import atomic_write
from pytest_llem.store.report import ReportError, read_report
from pytest_llem.store.runs import RunStore

__all__ = ["html_command", "render_page", "write_html_report", "write_session_html"]


def write_html_report(
    report: SessionReport,
    report_dir: Path,
    path: Path,
    history: Sequence[tuple[str, SessionReport]] = (),
) -> Path:
    """Render the report (timeseries paths resolve against `report_dir`) and write it to `path`."""
    text = render_page(report, report_dir, history)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)
    return path


def write_session_html(report: SessionReport, report_path: Path, store: RunStore, path: Path) -> str:
    """The plugin's `--llem-html`: this session plus the stored runs of the same machine (for the
    trend). Returns the line for the terminal; a failure to write is reported, never raised."""
    try:
        history = stored_reports(store, report.fingerprint)
        write_html_report(report, report_path.parent, path, history)
    except OSError as exc:
        return f"llem HTML report: cannot write {path}: {exc.strerror or exc}"
    return f"llem HTML report: {path}"


def html_command(args: argparse.Namespace, store: RunStore) -> int:
    """`llem report RUN -o FILE`: the run, with the trend of the same machine's runs up to it."""
    path = store.resolve(args.report)
    report = read_report(path)
    history = [
        (name, stored)
        for name, stored in stored_reports(store, report.fingerprint)
        if stored.created_at <= report.created_at
    ]
    try:
        write_html_report(report, path.parent, Path(args.output), history)
    except OSError as exc:
        raise ReportError(f"--output={args.output}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {args.output}")
    return 0
