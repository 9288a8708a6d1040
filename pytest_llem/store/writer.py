"""The one report writer, for pytest sessions and `llem run` alike.

Rewriting the whole report after every experiment costs O(n) per experiment, so O(n^2) per
session (a 300-experiment session spent a third of its time there). This writer appends:

- on the first record it writes `report.json` once, with the session's header (environment,
  run, fingerprint) and no experiments, `completed: false`;
- each experiment or benchmark figure is then one line appended to `report.jsonl` beside it
  (flushed and fsynced), so the 300th costs what the first did and a killed session still leaves
  every finished experiment readable (`read_report` joins the lines to the header);
- `finish()` compacts: `report.json` is written whole (experiments, figures, gate record,
  `completed`), with `experiments.parquet` beside it, both atomically, and the lines file is
  removed. A crash between the two leaves a report that already holds its experiments, and the
  reader then ignores the lines.

A write that fails is reported once as one line, and every result is kept in a file in the
temp directory (`keep_elsewhere`): a full disk or a vanished directory never loses a figure.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult, GateRecord, SessionReport
from pytest_llem.store.report import keep_elsewhere, lines_path, write_report, write_report_or_keep


class _Line(BaseModel):
    """One appended record: an experiment or a benchmark figure."""

    experiment: ExperimentResult | None = None
    figure: BenchmarkFigure | None = None


class ReportWriter:
    """Appends records to a session's report as they come; compacts it at `finish()`."""

    def __init__(self, header: SessionReport, path: Path) -> None:
        self.report = header  # holds every record so far, for the summary and for a fallback
        self.path = path
        self.error: str | None = None  # the first write failure, one line
        self._started = False

    def add_experiment(self, result: ExperimentResult) -> str | None:
        self.report.experiments.append(result)
        return self._append(_Line(experiment=result))

    def add_figure(self, figure: BenchmarkFigure) -> str | None:
        self.report.figures.append(figure)
        return self._append(_Line(figure=figure))

    def finish(self, completed: bool, gate: GateRecord | None = None) -> str | None:
        """The whole report, written atomically with its Parquet; None on success, else the
        one-line error (the results are kept elsewhere)."""
        self.report.completed = completed
        self.report.gate = gate
        error = write_report_or_keep(self.report, self.path)
        if error is None:
            lines_path(self.path).unlink(missing_ok=True)
        return self._failed(error)

    def _append(self, line: _Line) -> str | None:
        if self.error is not None:  # already failing: keep the fallback file current instead
            keep_elsewhere(self.report, self.error)
            return None
        try:
            if not self._started:
                header = self.report.model_copy(update={"experiments": [], "figures": [], "completed": False})
                write_report(header, self.path)
                self._started = True
            with open(lines_path(self.path), "a", encoding="utf-8") as stream:
                stream.write(line.model_dump_json() + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            return None
        except Exception as exc:  # disk, permissions, a vanished directory
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return self._failed(
                keep_elsewhere(self.report, f"cannot write the report {self.path} ({reason})")
            )

    def _failed(self, error: str | None) -> str | None:
        """The first failure is returned once (for one line on the terminal); later ones are
        kept in `error` only."""
        if error is None or self.error is not None:
            return None
        self.error = error
        return error
