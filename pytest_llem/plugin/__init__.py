"""pytest hooks for pytest-llem. Translates pytest into calls to the experiment API and back;
holds no measurement logic."""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_llem.energy import EnergyMeter
from pytest_llem.hardware.environment import git_state
from pytest_llem.measure.emissions import CarbonIntensity, resolve_intensity
from pytest_llem.measure.preflight import PreFlight
from pytest_llem.measure.session import ExperimentSession
from pytest_llem.plugin import hookspecs, options
from pytest_llem.plugin.benchmark_bridge import BenchmarkJsonHook, attach_to_benchmark
from pytest_llem.plugin.fixture import FIGURE_PROPERTY, MARKER, LlemFixture, marker_settings
from pytest_llem.plugin.gate import apply_gate, configure_gate, gate_record, gate_summary
from pytest_llem.plugin.progress import ProgressHooks
from pytest_llem.plugin.state import STATE_KEY, LlemState
from pytest_llem.render.summary import figure_line, render_summary
from pytest_llem.schema.config import build_config
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.errors import ConfigError, PreFlightError
from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult
from pytest_llem.store.report import new_report, utc_now
from pytest_llem.store.runs import RunStore, SessionRun, StorageError, check_run_name, commit_label
from pytest_llem.store.writer import ReportWriter

MARKER_HELP = (
    "llem(**settings): experiment settings for this test (model, dtype, batch_size, n_prompts, "
    "max_new_tokens, repeats, energy, ...); validated like llem.run() overrides"
)
XDIST_REFUSAL = (
    "pytest-llem cannot run experiments in parallel: concurrent experiments share the CPU/GPU and "
    "corrupt each other's energy and throughput figures. Run the benchmarks with -n 0 (or -p no:xdist)."
)
RESULTS_ATTR = "llem_results"


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _session_run(config: pytest.Config, store: RunStore) -> SessionRun:
    """Where this session stores its run; nothing is created yet (see SessionRun)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and "llem_run_dir" in workerinput:
        return SessionRun.existing(
            Path(workerinput["llem_run_dir"]), Path(workerinput["llem_report_path"]), store
        )
    name = options.option_value(config, options.option_by_flag("--llem-save"))
    if name is not None or config.getoption("llem_save") == "":  # an empty name is an error too
        name = name or ""
        try:
            check_run_name("--llem-save", str(name))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    json_path = options.option_value(config, options.option_by_flag("--llem-json"))
    commit, dirty = git_state(config.rootpath)
    if name is None and options.option_value(config, options.option_by_flag("--llem-autosave")):
        name = commit_label(commit, dirty)
    return SessionRun(store, name, commit, dirty, Path(json_path).resolve() if json_path else None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}{MARKER_HELP[4:]}")
    try:
        options_layer = options.experiment_layer(config)
        build_config(("--llem-* options / ini", options_layer))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    root = options.option_value(config, options.option_by_flag("--llem-dir"))
    store = RunStore(Path(root).resolve() if root else config.rootpath / ".llem")
    run = _session_run(config, store)
    workerinput = getattr(config, "workerinput", None)
    state = LlemState(
        config=config,
        session=ExperimentSession(output_dir=run.created_dir, baseline_cache_path=None),
        options_layer=options_layer,
        store=store,
        is_worker=workerinput is not None,
        worker_count=int(workerinput.get("workercount", 1)) if workerinput else 1,
        run=run,
    )
    config.stash[STATE_KEY] = state
    state.result_checks.append(attach_to_benchmark)
    state.result_checks.append(lambda item, result: apply_gate(state, item, result))
    state.session.carbon = _carbon_intensity(config)
    if not state.is_worker:
        config.pluginmanager.register(ProgressHooks(state.session), "llem-progress")
    configure_gate(state)
    config.pluginmanager.register(ResultCollector(state), "llem-results")
    if config.pluginmanager.hasplugin("benchmark"):
        config.pluginmanager.register(BenchmarkJsonHook(state.results), "llem-benchmark-json")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(state), "llem-xdist")


def _carbon_intensity(config: pytest.Config) -> CarbonIntensity | None:
    """--llem-carbon-intensity or --llem-country; a bad value stops the session in one line."""
    g_per_kwh = options.option_value(config, options.option_by_flag("--llem-carbon-intensity"))
    country = options.option_value(config, options.option_by_flag("--llem-country"))
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
    if not state.is_worker and any(
        "llem" in getattr(item, "fixturenames", ()) or item.get_closest_marker(MARKER) is not None
        for item in session.items
    ):
        _ensure_run_dir(state)


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
    """Collects results on the controlling process (under xdist they arrive with the test
    report) and appends each to the session's report as it comes (`store.writer`)."""

    def __init__(self, state: LlemState) -> None:
        self._state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self._state.is_worker:
            return
        if report.when == "call":  # every phase's report carries the item's properties
            for key, value in report.user_properties:
                if key == FIGURE_PROPERTY:
                    figure = BenchmarkFigure.model_validate_json(str(value))
                    self._state.figures.append(figure)
                    _show_error(self._state, _writer(self._state).add_figure(figure))
        payload = getattr(report, RESULTS_ATTR, None)
        if not payload:
            return
        writer = _writer(self._state)
        for data in payload:
            result = ExperimentResult.model_validate(data)
            self._state.results.append(result)
            _show_error(self._state, writer.add_experiment(result))


def _writer(state: LlemState) -> ReportWriter:
    """The session's report writer, made with the first result or benchmark figure."""
    if state.writer is None:
        environment = state.session.environment()
        try:
            run_id = state.run_dir.name
        except StorageError:
            run_id = f"unstored-{utc_now():%Y%m%dT%H%M%SZ}-{os.getpid()}"
        fingerprint = state.store.fingerprint(environment)
        header = new_report(environment, utc_now(), fingerprint, run_id, state.run.name)
        state.writer = ReportWriter(header, state.report_path)
        state.report = state.writer.report
    return state.writer


def _show_error(state: LlemState, error: str | None) -> None:
    """A write failure is shown once, as one line; the results are kept elsewhere."""
    if error and state.storage_error is None:
        state.storage_error = error
        reporter = state.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: {error}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _state(session.config)
    if not state.is_worker and (state.results or state.figures):
        interrupted = exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
        _show_error(state, _writer(state).finish(completed=not interrupted, gate=gate_record(state)))
        if state.storage_error is None and state.report is not None:
            session.config.hook.pytest_llem_report_written(
                config=session.config, report=state.report, path=state.report_path
            )
            html = options.option_value(session.config, options.option_by_flag("--llem-html"))
            if html:
                from pytest_llem.render.html import write_session_html

                target = session.config.invocation_params.dir / str(html)
                state.html_line = write_session_html(state.report, state.report_path, state.store, target)
        elif exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif not state.is_worker:
        state.run.release_if_empty()
    state.session.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = _state(config)
    if state.is_worker or not (state.results or state.figures):
        return
    terminalreporter.section("pytest-llem")
    if state.results:
        title = f"{len(state.results)} experiment(s); energy per output token, measured or estimated"
        terminalreporter.write(render_summary(state.results, title))
    for figure in state.figures:
        terminalreporter.write_line(figure_line(figure))
    gate_summary(state, terminalreporter)
    if state.storage_error:
        terminalreporter.write_line(f"ERROR: {state.storage_error}", red=True)
    else:
        terminalreporter.write_line(f"llem report: {state.report_path}")
    if state.html_line:
        terminalreporter.write_line(state.html_line)
