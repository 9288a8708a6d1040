"""pytest hooks for pytest-llem. Translates pytest into calls to the experiment API and back;
holds no measurement logic.

Only what pytest needs at start-up and collection is imported here (the option table, the
marker, the state); the measurement core loads with the first experiment. The modes are plugin
objects registered in `pytest_configure` only when they are on: the report writer on the
controlling process (`plugin.report`), the gate with `--llem-compare`/`--llem-ab`
(`plugin.gate`, which starts A/B's head in `plugin.ab`), live progress where there is a
terminal to show it (`plugin.progress`), and the pytest-benchmark and xdist bridges when those
plugins are present.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llem.plugin import hookspecs, options
from pytest_llem.plugin.markers import MARKER, MARKER_HELP, marker_settings, uses_llem
from pytest_llem.plugin.session_options import session_options
from pytest_llem.plugin.state import SHARD_KEY, SLOT_KEY, STATE_KEY, LlemState, ShardState, SlotState
from pytest_llem.store.runs import RunStore, SessionRun, StorageError, check_run_name, commit_label

if TYPE_CHECKING:
    from pytest_llem.energy import EnergyMeter
    from pytest_llem.measure.emissions import CarbonIntensity
    from pytest_llem.measure.preflight import PreFlight
    from pytest_llem.measure.session import ExperimentSession
    from pytest_llem.plugin.fixture import LlemFixture
    from pytest_llem.schema.environment import EnvironmentSnapshot
    from pytest_llem.schema.results import ExperimentResult

SESSION_LAYER = "--llem-* options / ini"


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # xdist asks before pytest_configure
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    from pytest_llem.plugin.slots import auto_workers

    return auto_workers(config)


def _session_run(config: pytest.Config, store: RunStore) -> SessionRun:
    """Where this session stores its run; nothing is created yet (see SessionRun)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and "llem_run_dir" in workerinput:
        return SessionRun.existing(
            Path(workerinput["llem_run_dir"]), Path(workerinput["llem_report_path"]), store
        )
    name = session_options(config).save
    if name is not None or config.getoption("llem_save") == "":  # an empty name is an error too
        name = name or ""
        try:
            check_run_name("--llem-save", str(name))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    json_path = session_options(config).json
    target = Path(json_path).resolve() if json_path else None
    if name is None and session_options(config).autosave:
        commit, dirty = _git_state(config.rootpath)  # the name is the commit: needed now
        return SessionRun(store, commit_label(commit, dirty), commit, dirty, target)
    return SessionRun(store, name, json_path=target, revision=lambda: _git_state(config.rootpath))


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    """The repository's (commit, dirty), asked only when a run needs it: its module is not
    imported at start-up (collection cost)."""
    from pytest_llem.hardware.environment import git_state

    return git_state(root)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_llem.plugin.shard import ShardPlugin, durations_source, resolve_shard, stored_durations
    from pytest_llem.plugin.simulation import SimulatedGpusPlugin, simulated_gpu_count
    from pytest_llem.schema.errors import ConfigError

    config.addinivalue_line("markers", f"{MARKER}{MARKER_HELP[4:]}")
    count = simulated_gpu_count()  # LLEM_SIMULATED_GPUS: in every process of the session
    if count is not None:
        config.pluginmanager.register(SimulatedGpusPlugin(count), "llem-simulated-gpus")
    try:
        options_layer = options.experiment_layer(config)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    root = session_options(config).dir
    store = RunStore(Path(root).resolve() if root else config.rootpath / ".llem")
    run = _session_run(config, store)
    workerinput = getattr(config, "workerinput", None)
    state = LlemState(
        config=config,
        options_layer=options_layer,
        store=store,
        is_worker=workerinput is not None,
        run=run,
        carbon=_carbon_intensity(config),
    )
    if workerinput:  # an xdist worker: its GPU slot, where the controller gave it one
        from pytest_llem.hardware.slots import Slot
        from pytest_llem.plugin.slots import SLOT_INPUT

        if SLOT_INPUT in workerinput:
            config.stash[SLOT_KEY] = SlotState(Slot.from_input(workerinput[SLOT_INPUT]))
    config.stash[STATE_KEY] = state
    _register_modes(config, state)
    shard = resolve_shard(session_options(config).shard)
    if shard is not None:  # xdist workers collect, so each one deselects the same way
        if workerinput is not None:  # the controller chose the durations: every worker sees the same
            source = workerinput.get("llem_shard_durations")
        else:
            reference = session_options(config).shard_durations
            found = durations_source(store.root, reference)
            source = str(found) if found is not None else None
        config.stash[SHARD_KEY] = ShardState(str(shard), source)
        durations = stored_durations(Path(source)) if source else None
        config.pluginmanager.register(ShardPlugin(shard, durations), "llem-shard")


def _register_modes(config: pytest.Config, state: LlemState) -> None:
    """Each mode is a plugin object of its own, registered only when it is on."""
    from pytest_llem.plugin.benchmark_bridge import attach_to_benchmark

    if state.is_worker and state.slot is not None:  # its stages, for the controller to show
        from pytest_llem.plugin.progress import ProgressHooks
        from pytest_llem.plugin.worker_progress import worker_tracker

        hooks = ProgressHooks(state, make_tracker=lambda _config: worker_tracker(state), numbered_of_n=False)
        config.pluginmanager.register(hooks, "llem-progress")
    if not state.is_worker:
        from pytest_llem.plugin.progress import ProgressHooks
        from pytest_llem.plugin.report import REPORT_KEY, ReportPlugin

        config.pluginmanager.register(ProgressHooks(state), "llem-progress")
        config.stash[REPORT_KEY] = ReportPlugin(state)
        config.pluginmanager.register(config.stash[REPORT_KEY], "llem-report")
    from pytest_llem.plugin.validity import record_validity, require_valid

    state.result_checks.append(attach_to_benchmark)  # before the gate, which may fail the test
    state.result_checks.append(record_validity)
    if session_options(config).gates:
        from pytest_llem.plugin.gate import configure_gate

        configure_gate(state)
    if session_options(config).require_valid:
        state.result_checks.append(require_valid)  # last: the gate has judged the result first
    if config.pluginmanager.hasplugin("benchmark"):
        from pytest_llem.plugin.benchmark_bridge import BenchmarkJsonHook
        from pytest_llem.plugin.report import report_plugin

        collected = report_plugin(config)
        config.pluginmanager.register(
            BenchmarkJsonHook(collected.results if collected else []), "llem-benchmark-json"
        )
    if config.pluginmanager.hasplugin("xdist") and not state.is_worker:
        from pytest_llem.plugin.slots import SlotController

        config.pluginmanager.register(XdistHooks(state), "llem-xdist")
        config.pluginmanager.register(SlotController(state), "llem-slots")


def _carbon_intensity(config: pytest.Config) -> CarbonIntensity | None:
    """--llem-carbon-intensity or --llem-country; a bad value stops the session in one line."""
    g_per_kwh = session_options(config).carbon_intensity
    country = session_options(config).country
    if g_per_kwh is None and country is None:
        return None
    from pytest_llem.measure.emissions import resolve_intensity
    from pytest_llem.schema.errors import ConfigError

    try:
        return resolve_intensity(g_per_kwh, country)
    except ConfigError as exc:
        message = str(exc)
    raise pytest.UsageError(message)


class XdistHooks:
    """Registered only when pytest-xdist is present: hand the run directory to workers."""

    def __init__(self, state: LlemState) -> None:
        self._state = state

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llem_run_dir"] = str(_ensure_run_dir(self._state))
        node.workerinput["llem_report_path"] = str(self._state.report_path)
        shard = self._state.config.stash.get(SHARD_KEY, None)
        node.workerinput["llem_shard_durations"] = shard.balanced_by if shard is not None else None


def _state(config: pytest.Config) -> LlemState:
    return config.stash[STATE_KEY]


def _ensure_run_dir(state: LlemState) -> Path:
    """Create the session's run directory before its first experiment; a directory that
    cannot be created stops the session with one line naming the path."""
    try:
        return state.run_dir
    except StorageError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_finish(session: pytest.Session) -> None:
    state = _state(session.config)
    if session.config.option.collectonly:
        return  # collecting runs no experiment: nothing is stored
    if not state.is_worker and any(uses_llem(item) for item in session.items):
        _ensure_run_dir(state)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker adds the groups to node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if getattr(config, "workerinput", None) is not None and getattr(config.option, "loadgroup", False):
        from pytest_llem.plugin.slots import group_by_model

        group_by_model(items, _state(config))


def pytest_runtest_setup(item: pytest.Item) -> None:
    state = _state(item.config)
    if "llem" in getattr(item, "fixturenames", ()):
        from pytest_llem.plugin.slots import enter_slot

        enter_slot(state)  # under xdist: the worker's slot, or the one line why it has none
    if item.get_closest_marker(MARKER) is not None:
        from pytest_llem.schema.config import build_config
        from pytest_llem.schema.errors import ConfigError

        try:
            build_config(("@pytest.mark.llem", marker_settings(item)))
            return
        except ConfigError as exc:
            message = str(exc)
        pytest.fail(message, pytrace=False)  # outside the except: no chained traceback


@pytest.fixture
def llem(request: pytest.FixtureRequest) -> LlemFixture:
    """Run LLM inference experiments: `llem.run(**overrides)` or `with llem.measure(output_tokens=N)`."""
    from pytest_llem.plugin.fixture import LlemFixture

    return LlemFixture(request.node, _state(request.config))


@pytest.fixture(scope="session")
def llem_session(pytestconfig: pytest.Config) -> ExperimentSession:
    """The session's ExperimentSession: shared caches of models, meters and baselines."""
    return _state(pytestconfig).session


@pytest.fixture(scope="session")
def llem_environment(llem_session: ExperimentSession) -> EnvironmentSnapshot:
    """Where the experiments run: versions, CPU, GPUs, git commit."""
    return llem_session.environment()


@pytest.fixture(scope="session")
def llem_preflight(pytestconfig: pytest.Config, llem_session: ExperimentSession) -> PreFlight:
    """Pre-flight of the session-level settings (command line and ini); the model is checked
    only when one is named there."""
    from pytest_llem.schema.config import build_config
    from pytest_llem.schema.errors import PreFlightError

    options_layer = _state(pytestconfig).options_layer
    config = build_config((SESSION_LAYER, options_layer))
    try:
        return llem_session.preflight(config, check_model="model" in options_layer)
    except PreFlightError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def llem_meter(
    pytestconfig: pytest.Config, llem_preflight: PreFlight, llem_session: ExperimentSession
) -> EnergyMeter:
    """The energy meter the session-level settings select."""
    from pytest_llem.schema.config import build_config

    config = build_config((SESSION_LAYER, _state(pytestconfig).options_layer))
    return llem_session.meter(config.energy, llem_preflight.devices)[0]


def pytest_llem_experiment_result(item: pytest.Item, result: ExperimentResult) -> None:
    _state(item.config).pending.setdefault(item.nodeid, []).append(result)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    pending = _state(item.config).pending.pop(item.nodeid, [])
    if pending:
        from pytest_llem.plugin.report import attach_results

        attach_results(report, pending)
    return report


@pytest.hookimpl(wrapper=True, trylast=True)  # the innermost wrapper: inside the terminal's
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, None, None]:
    """Engine hosts are asked to release their models and exit before the report is written
    (the session-finish hooks inside this wrapper), so their shutdown overlaps it; then they
    are waited for, and models and meters released, before pytest prints its summary, so
    engine shutdown logs never come after it."""
    state = _state(session.config)
    state.begin_close()
    try:
        return (yield)
    finally:
        state.close()
