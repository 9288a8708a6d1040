"""The report-writer mode: registered on the controlling process only (never on an xdist
worker), it collects every experiment and benchmark figure as its test report arrives (under
xdist they come with the worker's report), appends each to the session's report
(`store.writer`), compacts the report at session end, writes the HTML report, and prints the
summary. It keeps its state itself, in `config.stash[REPORT_KEY]` where the gate and the
pytest-benchmark bridge find the results."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llem.plugin.markers import FIGURE_PROPERTY
from pytest_llem.plugin.session_options import session_options
from pytest_llem.plugin.state import GATE_KEY, SHARD_KEY, LlemState
from pytest_llem.store import runs
from pytest_llem.store.runs import StorageError

if TYPE_CHECKING:
    from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult, SessionReport
    from pytest_llem.store.writer import ReportWriter

RESULTS_ATTR = "llem_results"  # the test report attribute that carries results to the controller


class ReportPlugin:
    """Every result of the session, appended to the report as it comes."""

    def __init__(self, state: LlemState) -> None:
        self.state = state
        self.results: list[ExperimentResult] = []
        self.figures: list[BenchmarkFigure] = []
        self.writer: ReportWriter | None = None  # made with the first record
        self.error: str | None = None  # the first write failure, shown once
        self.html_line: str | None = None  # where --llem-html wrote the page, or why it could not
        self.durations: dict[str, float] = {}  # seconds per test, every phase (shard balancing)

    @property
    def report(self) -> SessionReport | None:
        return self.writer.report if self.writer is not None else None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult

        nodeid = report.nodeid
        if (
            getattr(self.state.config.option, "dist", None) == "loadgroup" and "@" in nodeid
        ):  # xdist's `@group` suffix
            nodeid = nodeid.rsplit("@", 1)[0]
        self.durations[nodeid] = self.durations.get(nodeid, 0.0) + float(
            getattr(report, "duration", 0.0) or 0.0
        )

        if report.when == "call":  # every phase's report carries the item's properties
            for key, value in report.user_properties:
                if key == FIGURE_PROPERTY:
                    figure = BenchmarkFigure.model_validate_json(str(value))
                    self.figures.append(figure)
                    self._show(self._writer().add_figure(figure))
        for data in getattr(report, RESULTS_ATTR, None) or []:
            result = ExperimentResult.model_validate(data)
            self.results.append(result)
            self._show(self._writer().add_experiment(result))

    def _writer(self) -> ReportWriter:
        if self.writer is None:
            from pytest_llem.store.report import new_report
            from pytest_llem.store.writer import ReportWriter

            state = self.state
            environment = state.session.environment()
            try:
                run_id = state.run_dir.name
            except StorageError:
                run_id = f"unstored-{runs.utc_now():%Y%m%dT%H%M%SZ}-{os.getpid()}"
            fingerprint = state.store.fingerprint(environment)
            header = new_report(environment, runs.utc_now(), fingerprint, run_id, state.run.name)
            shard = state.config.stash.get(SHARD_KEY, None)
            if shard is not None:
                header.shard, header.shard_balanced_by = shard.shard, shard.balanced_by
            self.writer = ReportWriter(header, state.report_path)
        return self.writer

    def _show(self, error: str | None) -> None:
        """A write failure is shown once, as one line; the results are kept elsewhere."""
        if error and self.error is None:
            self.error = error
            reporter = self.state.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"ERROR: {error}", red=True)

    @pytest.hookimpl(trylast=True)  # after the gate and A/B have settled their records
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not (self.results or self.figures):
            self.state.run.release_if_empty()
            return
        interrupted = exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
        gate = session.config.stash.get(GATE_KEY, None)
        record = gate.record(self.results) if gate is not None else None
        writer = self._writer()
        writer.report.test_durations_s = {
            nodeid: round(seconds, 3) for nodeid, seconds in self.durations.items()
        }
        self._show(writer.finish(completed=not interrupted, gate=record))
        report = self.report
        if self.error is None and report is not None:
            session.config.hook.pytest_llem_report_written(
                config=session.config, report=report, path=self.state.report_path
            )
            html = session_options(session.config).html
            if html:
                from pytest_llem.render.html import write_session_html

                target = session.config.invocation_params.dir / str(html)
                self.html_line = write_session_html(report, self.state.report_path, self.state.store, target)
        elif exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if not (self.results or self.figures):
            return
        from pytest_llem.render.summary import figure_line, render_summary, report_lines

        terminalreporter.section("pytest-llem")
        if self.results:
            title = f"{len(self.results)} experiment(s); energy per output token, measured or estimated"
            terminalreporter.write(render_summary(self.results, title))
        for figure in self.figures:
            terminalreporter.write_line(figure_line(figure))
        gate = config.stash.get(GATE_KEY, None)
        if gate is not None:
            gate.summary(self.results, terminalreporter)
        if self.error:
            terminalreporter.write_line(f"ERROR: {self.error}", red=True)
        else:
            for line in report_lines(self.state.report_path):
                terminalreporter.write_line(line)
        if self.html_line:
            terminalreporter.write_line(self.html_line)


REPORT_KEY = pytest.StashKey[ReportPlugin]()


def attach_results(
    report: pytest.TestReport, pending: list[ExperimentResult], outcome: str | None = None
) -> None:
    """Put a test's results on its report, with the test's outcome, for the controller."""
    if outcome is None:
        outcome = report.outcome if report.when == "call" else f"{report.outcome} in {report.when}"
    setattr(report, RESULTS_ATTR, [_with_outcome(r, outcome) for r in pending])


def _with_outcome(result: ExperimentResult, outcome: str) -> Any:
    """The result as JSON data, with its test's outcome."""
    stamped = result.model_copy()
    stamped.test_outcome = outcome
    return json.loads(stamped.model_dump_json())


def report_plugin(config: pytest.Config) -> ReportPlugin | None:
    return config.stash.get(REPORT_KEY, None)
