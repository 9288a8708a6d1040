"""The pytest session's llem state, kept in `config.stash[STATE_KEY]` where the fixture, the
gate and A/B find it: where runs are stored, the session-level settings, and the experiment
session, made with the first experiment (the measurement core is not imported before one
runs, so `pytest --collect-only` stays cheap). It imports no mode: the modes (report writer,
gate, A/B head, progress) are plugin objects of their own, registered in `pytest_configure`
only when on, and add their per-result steps to `result_checks`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from pytest_llem.measure.progress import SILENT, Progress
from pytest_llem.store import runs
from pytest_llem.store.runs import RunStore, SessionRun

if TYPE_CHECKING:
    from pytest_llem.hardware.slots import Slot
    from pytest_llem.measure.emissions import CarbonIntensity
    from pytest_llem.measure.session import ExperimentSession
    from pytest_llem.measure.turns import WindowTurns
    from pytest_llem.plugin.ledger import WorkerLedger
    from pytest_llem.schema.results import ExperimentResult, GateRecord

ResultCheck = Callable[[pytest.Item, "ExperimentResult"], None]


@dataclass
class LlemState:
    """Session state, kept in config.stash."""

    config: pytest.Config
    options_layer: dict[str, Any]
    store: RunStore
    is_worker: bool
    worker_count: int
    run: SessionRun
    carbon: CarbonIntensity | None = None  # grid intensity for emissions
    # below every setting a user gives: A/B leaves a core free (plugin.ab.session.headroom_layer)
    defaults_layer: dict[str, Any] = field(default_factory=dict)
    turns: WindowTurns | None = None  # A/B mode interleaves the session's windows here
    shard: str | None = None  # "I/N" when this session runs one shard (plugin.shard)
    shard_balanced_by: str | None = None  # the report whose durations balanced the shards
    slot: Slot | None = None  # an xdist worker's devices (plugin.slots)
    pending: dict[str, list[ExperimentResult]] = field(default_factory=dict)  # by test, until its report
    result_checks: list[ResultCheck] = field(default_factory=list)
    isolation: str | None = None  # where engines run (--llem-isolation; None: measure.session's default)
    _session: ExperimentSession | None = None
    _progress: Progress = SILENT
    _ledger: WorkerLedger | None = None

    @property
    def session(self) -> ExperimentSession:
        """The experiment session (caches of models, meters, baselines), made on first use
        with the settings the modes gave the state before it existed."""
        if self._session is None:
            from pytest_llem.measure.session import ExperimentSession

            self._session = ExperimentSession(
                output_dir=self.run.created_dir, baseline_cache_path=None, isolation=self.isolation
            )
            self._session.carbon = self.carbon
            self._session.progress = self._progress
            if self.turns is not None:
                self._session.turns = self.turns
        return self._session

    @property
    def ledger(self) -> WorkerLedger | None:
        """Under xdist, this worker's part of the workers' ledger (plugin.ledger); else None."""
        if self.slot is None:
            return None
        if self._ledger is None:
            from pytest_llem.plugin.ledger import WorkerLedger

            self._ledger = WorkerLedger(self.run_dir, self.slot.worker)
        return self._ledger

    @property
    def progress(self) -> Progress:
        """Where the lifecycle reports its stages (the progress display, when it is on)."""
        return self._progress

    @progress.setter
    def progress(self, value: Progress) -> None:
        self._progress = value
        if self._session is not None:
            self._session.progress = value

    def close(self) -> None:
        """Release models and meters, if an experiment ever ran."""
        if self._session is not None:
            self._session.close()

    @property
    def run_dir(self) -> Path:
        """This session's run directory, created exclusively on first use."""
        run_dir = self.run.ensure(runs.utc_now())
        if self._session is not None:
            self._session.output_dir = run_dir
        return run_dir

    @property
    def report_path(self) -> Path:
        return self.run.report_path(runs.utc_now())

    def after_result(self, item: pytest.Item, result: ExperimentResult) -> None:
        """Post-measurement steps (the pytest-benchmark bridge, the regression gate, which may
        fail the test), registered by the modes that are on."""
        for check in self.result_checks:
            check(item, result)


STATE_KEY = pytest.StashKey[LlemState]()


class SessionGate(Protocol):
    """What the report writer asks of the gate mode (`plugin.gate.GatePlugin`), when it is on."""

    def record(self, results: list[ExperimentResult]) -> GateRecord: ...

    def summary(self, results: list[ExperimentResult], terminalreporter: Any) -> None: ...


GATE_KEY = pytest.StashKey[SessionGate]()  # set only when the gate is on


def llem_state(config: pytest.Config) -> LlemState:
    return config.stash[STATE_KEY]
