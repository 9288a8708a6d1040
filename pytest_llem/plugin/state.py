"""The pytest session's llem state, kept in `config.stash[STATE_KEY]` where the fixture, the
gate and A/B find it: where runs are stored, the session-level settings, and the experiment
session, made with the first experiment (the measurement core is not imported before one
runs, so `pytest --collect-only` stays cheap). It imports no mode: the modes (report writer,
gate, A/B head, progress) are plugin objects of their own, registered in `pytest_configure`
only when on, and add their per-result steps to `result_checks`; a mode's own state lives
under its own stash key (`SLOT_KEY`, `SHARD_KEY`, `AB_HEADROOM_KEY`; the gate's and the report
writer's on their plugin objects), written by that mode alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from pytest_llem.measure.progress import SILENT, Progress
from pytest_llem.plugin.session_options import session_options
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
class SlotState:
    """An xdist worker's slot (plugin.slots owns it, under `SLOT_KEY`): its devices, and whether
    this process has been pinned to its cores (first experiment, or A/B on the slot)."""

    slot: Slot
    pinned: bool = False

    def layer(self) -> dict[str, Any]:
        """The slot's default below every user setting: torch threads = its cores, once pinned."""
        return {"num_threads": len(self.slot.cores)} if self.pinned and self.slot.cores else {}


@dataclass(frozen=True)
class ShardState:
    """The shard this session runs (plugin.shard owns it, under `SHARD_KEY`), and the report
    whose durations balanced the shards."""

    shard: str
    balanced_by: str | None


# each mode's own state, written by that mode only
SLOT_KEY = pytest.StashKey[SlotState]()
SHARD_KEY = pytest.StashKey[ShardState]()
AB_HEADROOM_KEY = pytest.StashKey[dict[str, Any]]()  # plugin.ab: the thread count both sides default to


@dataclass
class LlemState:
    """What every mode shares, kept in config.stash: where runs are stored, the settings the
    options give every experiment, the experiment session, and the per-result steps."""

    config: pytest.Config
    options_layer: dict[str, Any]
    store: RunStore
    is_worker: bool
    run: SessionRun
    carbon: CarbonIntensity | None = None  # grid intensity for emissions
    pending: dict[str, list[ExperimentResult]] = field(default_factory=dict)  # by test, until its report
    result_checks: list[ResultCheck] = field(default_factory=list)
    _session: ExperimentSession | None = None
    _progress: Progress = SILENT
    _turns: WindowTurns | None = None
    _ledger: WorkerLedger | None = None

    @property
    def slot(self) -> Slot | None:
        """This xdist worker's slot (plugin.slots); None outside xdist slots."""
        slot_state = self.config.stash.get(SLOT_KEY, None)
        return slot_state.slot if slot_state is not None else None

    def defaults_layers(self) -> list[tuple[str, dict[str, Any]]]:
        """The modes' defaults below every user setting, each named for what set it."""
        slot_state = self.config.stash.get(SLOT_KEY, None)
        return [
            ("xdist slot", slot_state.layer() if slot_state is not None else {}),
            ("A/B headroom", self.config.stash.get(AB_HEADROOM_KEY, {})),
        ]

    @property
    def turns(self) -> WindowTurns | None:
        """Whose turn it is to run a window: A/B mode sets it; None on its own."""
        return self._turns

    @turns.setter
    def turns(self, value: WindowTurns | None) -> None:
        self._turns = value
        if self._session is not None:
            from pytest_llem.measure.turns import SOLO

            self._session.turns = value if value is not None else SOLO

    @property
    def session(self) -> ExperimentSession:
        """The experiment session (caches of models, meters, baselines), made on first use
        with the settings the modes gave the state before it existed."""
        if self._session is None:
            from pytest_llem.measure.session import ExperimentSession

            self._session = ExperimentSession(
                output_dir=self.run.created_dir,
                baseline_cache_path=None,
                isolation=session_options(self.config).isolation,
            )
            self._session.carbon = self.carbon
            self._session.progress = self._progress
            if self._turns is not None:
                self._session.turns = self._turns
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

    def begin_close(self) -> None:
        """Ask the engine hosts to release their models and exit, without waiting."""
        if self._session is not None:
            self._session.begin_close()

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
