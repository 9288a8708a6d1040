"""The pytest session's llem state, kept in `config.stash[STATE_KEY]` where the fixture, the
gate and A/B find it. It imports no mode: the modes register themselves with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_llem.measure.session import ExperimentSession
from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult, SessionReport
from pytest_llem.store.report import utc_now
from pytest_llem.store.runs import RunStore, SessionRun
from pytest_llem.store.writer import ReportWriter

ResultCheck = Callable[[pytest.Item, ExperimentResult], None]


@dataclass
class LlemState:
    """Session state, kept in config.stash."""

    config: pytest.Config
    session: ExperimentSession
    options_layer: dict[str, Any]
    store: RunStore
    is_worker: bool
    worker_count: int
    run: SessionRun
    results: list[ExperimentResult] = field(default_factory=list)
    figures: list[BenchmarkFigure] = field(default_factory=list)
    pending: dict[str, list[ExperimentResult]] = field(default_factory=dict)
    report: SessionReport | None = None  # the writer's report: every record so far
    writer: ReportWriter | None = None  # made with the first result (store.writer)
    storage_error: str | None = None  # set when the report could not be written
    html_line: str | None = None  # where --llem-html wrote the HTML report, or why it could not
    result_checks: list[ResultCheck] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        """This session's run directory, created exclusively on first use."""
        run_dir = self.run.ensure(utc_now())
        self.session.output_dir = run_dir
        return run_dir

    @property
    def report_path(self) -> Path:
        return self.run.report_path(utc_now())

    def after_result(self, item: pytest.Item, result: ExperimentResult) -> None:
        """Post-measurement steps (the pytest-benchmark bridge, the regression gate, which may
        fail the test), registered by the modes that are on."""
        for check in self.result_checks:
            check(item, result)


STATE_KEY = pytest.StashKey[LlemState]()


def llem_state(config: pytest.Config) -> LlemState:
    return config.stash[STATE_KEY]
