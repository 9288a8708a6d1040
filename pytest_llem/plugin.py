"""pytest hooks for pytest-llem. Translates pytest into calls to the experiment API and back;
holds no measurement logic."""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_llem import hookspecs, options
from pytest_llem.benchmark_bridge import BenchmarkJsonHook, attach_to_benchmark
from pytest_llem.config import build_config
from pytest_llem.energy import EnergyMeter
from pytest_llem.environment import EnvironmentSnapshot, git_state
from pytest_llem.errors import ConfigError, PreFlightError
from pytest_llem.experiment import ExperimentSession
from pytest_llem.fixture import MARKER, LlemFixture, marker_settings
from pytest_llem.gate import apply_gate, configure_gate
from pytest_llem.preflight import PreFlight
from pytest_llem.report import new_report, utc_now, write_report
from pytest_llem.results import ExperimentResult, SessionReport
from pytest_llem.storage import RunStore
from pytest_llem.summary import render_summary

MARKER_HELP = (
    "llem(**settings): experiment settings for this test (model, dtype, batch_size, n_prompts, "
    "max_new_tokens, repeats, energy, ...); validated like llem.run() overrides"
)
XDIST_REFUSAL = (
    "pytest-llem cannot run experiments in parallel: concurrent experiments share the CPU/GPU and "
    "corrupt each other's energy and throughput figures. Run the benchmarks with -n 0 (or -p no:xdist)."
)
RESULTS_ATTR = "llem_results"


@dataclass
class LlemState:
    """Session state, kept in config.stash."""

    config: pytest.Config
    session: ExperimentSession
    options_layer: dict[str, Any]
    store: RunStore
    is_worker: bool
    worker_count: int
    run_dir: Path
    report_path: Path
    results: list[ExperimentResult] = field(default_factory=list)
    pending: dict[str, list[ExperimentResult]] = field(default_factory=dict)
    report: SessionReport | None = None

    def after_result(self, item: pytest.Item, result: ExperimentResult) -> None:
        """Post-measurement checks (the regression gate) that may fail the test."""
        attach_to_benchmark(item, result)
        apply_gate(self, item, result)


STATE_KEY = pytest.StashKey[LlemState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _paths(config: pytest.Config, store: RunStore) -> tuple[Path, Path]:
    workerinput = getattr(config, "workerinput", None)
    if workerinput and "llem_run_dir" in workerinput:
        run_dir = Path(workerinput["llem_run_dir"])
        return run_dir, Path(workerinput["llem_report_path"])
    commit, dirty = git_state(config.rootpath)
    run_dir = store.new_run_dir(commit, dirty, utc_now())
    json_path = options.option_value(config, options.option_by_flag("--llem-json"))
    report_path = Path(json_path).resolve() if json_path else run_dir / "report.json"
    return run_dir, report_path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}{MARKER_HELP[4:]}")
    try:
        options_layer = options.experiment_layer(config)
        build_config(("--llem-* options / ini", options_layer))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    root = options.option_value(config, options.option_by_flag("--llem-dir"))
    store = RunStore(Path(root).resolve() if root else config.rootpath / ".llem")
    run_dir, report_path = _paths(config, store)
    workerinput = getattr(config, "workerinput", None)
    state = LlemState(
        config=config,
        session=ExperimentSession(output_dir=report_path.parent, baseline_cache_path=None),
        options_layer=options_layer,
        store=store,
        is_worker=workerinput is not None,
        worker_count=int(workerinput.get("workercount", 1)) if workerinput else 1,
        run_dir=run_dir,
        report_path=report_path,
    )
    config.stash[STATE_KEY] = state
    configure_gate(state)
    config.pluginmanager.register(ResultCollector(state), "llem-results")
    if config.pluginmanager.hasplugin("benchmark"):
        config.pluginmanager.register(BenchmarkJsonHook(state.results), "llem-benchmark-json")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(state), "llem-xdist")


class XdistHooks:
    """Registered only when pytest-xdist is present: hand the run directory to workers."""

    def __init__(self, state: LlemState) -> None:
        self._state = state

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llem_run_dir"] = str(self._state.run_dir)
        node.workerinput["llem_report_path"] = str(self._state.report_path)


def _state(config: pytest.Config) -> LlemState:
    return config.stash[STATE_KEY]


def pytest_runtest_setup(item: pytest.Item) -> None:
    state = _state(item.config)
    uses_llem = "llem" in getattr(item, "fixturenames", ())
    if uses_llem and state.worker_count > 1:
        pytest.fail(XDIST_REFUSAL, pytrace=False)
    if item.get_closest_marker(MARKER) is not None:
        try:
            build_config(("@pytest.mark.llem", marker_settings(item)))
            return
        except ConfigError as exc:
            message = str(exc)
        pytest.fail(message, pytrace=False)  # outside the except: no chained traceback


@pytest.fixture
def llem(request: pytest.FixtureRequest) -> LlemFixture:
    """Run LLM inference experiments: `llem.run(**overrides)` or `with llem.measure(output_tokens=N)`."""
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
    options_layer = _state(pytestconfig).options_layer
    config = build_config(("--llem-* options / ini", options_layer))
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
    config = build_config(("--llem-* options / ini", _state(pytestconfig).options_layer))
    return llem_session.meter(config.energy, llem_preflight.devices)[0]


def pytest_llem_experiment_result(item: pytest.Item, result: ExperimentResult) -> None:
    _state(item.config).pending.setdefault(item.nodeid, []).append(result)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    pending = _state(item.config).pending.pop(item.nodeid, [])
    if pending:
        outcome = report.outcome if report.when == "call" else f"{report.outcome} in {report.when}"
        setattr(
            report,
            RESULTS_ATTR,
            [json.loads(r.model_copy(update={"test_outcome": outcome}).model_dump_json()) for r in pending],
        )
    return report


class ResultCollector:
    """Collects results on the controlling process; under xdist they arrive with the test report."""

    def __init__(self, state: LlemState) -> None:
        self._state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = getattr(report, RESULTS_ATTR, None)
        if not payload or self._state.is_worker:
            return
        self._state.results.extend(ExperimentResult.model_validate(data) for data in payload)
        _write(self._state)


def _write(state: LlemState) -> None:
    if state.report is None:
        environment = state.session.environment()
        fingerprint = state.store.fingerprint(environment)
        state.report = new_report(environment, utc_now(), fingerprint, state.run_dir.name)
    state.report.experiments = list(state.results)
    write_report(state.report, state.report_path)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = _state(session.config)
    if not state.is_worker and state.results:
        _write(state)
        assert state.report is not None
        state.store.after_write(state.report, state.report_path, session.config)
        session.config.hook.pytest_llem_report_written(
            config=session.config, report=state.report, path=state.report_path
        )
    state.session.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = _state(config)
    if state.is_worker or not state.results:
        return
    terminalreporter.section("pytest-llem")
    title = f"{len(state.results)} experiment(s); energy per output token, measured or estimated"
    terminalreporter.write(render_summary(state.results, title))
    terminalreporter.write_line(f"llem report: {state.report_path}")
