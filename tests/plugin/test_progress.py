"""Live progress: plain lines at most (and, while an experiment runs, at least) every 10 s where
output is not a terminal; nothing under -q; the lifecycle reports every stage."""

import io
import itertools
from pathlib import Path

import pytest
from factories import simulated_settings
from rich.console import Console

from pytest_llem import ExperimentSession, build_config
from pytest_llem.plugin import progress
from pytest_llem.plugin.progress import LiveStatus, PlainLines, Status, describe
from pytest_llem.testing import SimulatedGpu, simulated_gpus


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_plain_lines_are_written_at_most_every_interval() -> None:
    clock, out = ManualClock(), io.StringIO()
    lines = PlainLines(out, interval_s=10.0, clock=clock)
    lines.begin_experiment("test_a[1]", 1, 3)
    lines.update("warmup", 1, 5)
    clock.now = 4.0
    lines.update("repeat", 1, 3)  # 4 s after the first line: held back
    lines.tick()
    assert _lines(out) == ["[llem] experiment 1/3 test_a[1] | warmup 1/5 | 0 s"]
    clock.now = 10.0
    lines.tick()  # the newest status, once the interval has passed
    assert _lines(out)[1:] == ["[llem] experiment 1/3 test_a[1] | repeat 1/3 | 6 s"]


def test_a_long_stage_still_prints_every_interval_and_nothing_between_experiments() -> None:
    clock, out = ManualClock(), io.StringIO()
    lines = PlainLines(out, interval_s=10.0, clock=clock)
    lines.begin_experiment("test_a", 1, None)
    lines.update("loading tiny (transformers, float32)")
    for clock.now in (5.0, 10.0, 15.0, 20.0):
        lines.tick()
    assert _lines(out) == [
        "[llem] experiment 1 test_a | loading tiny (transformers, float32) | 0 s",
        "[llem] experiment 1 test_a | loading tiny (transformers, float32) | 10 s",
        "[llem] experiment 1 test_a | loading tiny (transformers, float32) | 20 s",
    ]
    lines.end_experiment()
    clock.now = 100.0
    lines.tick()
    assert len(_lines(out)) == 3


def test_a_line_starts_below_pytest_s_unfinished_line() -> None:
    clock, out = ManualClock(), io.StringIO()
    column = {"width": 17}  # pytest wrote "tests/test_x.py " and waits for the outcome
    lines = PlainLines(out, interval_s=10.0, clock=clock, column=lambda: column["width"])
    lines.begin_experiment("test_a", 1, 1)
    lines.update("warmup", 1, 1)
    clock.now = 10.0
    lines.update("repeat", 1, 2)  # pytest's line has not moved: no second line break
    assert out.getvalue() == (
        "\n[llem] experiment 1/1 test_a | warmup 1/1 | 0 s\n[llem] experiment 1/1 test_a | repeat 1/2 | 0 s\n"
    )


def test_a_countdown_shows_the_time_left() -> None:
    status = Status("test_a", 2, 4, "thermal floor", countdown_s=60.0, stage_started=100.0)
    assert describe(status, 115.0) == "[llem] experiment 2/4 test_a | thermal floor | 45 s left"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int | None, int | None, float | None]] = []

    def update(
        self, stage: str, step: int | None = None, total: int | None = None, countdown_s: float | None = None
    ) -> None:
        self.events.append((stage, step, total, countdown_s))


def test_the_lifecycle_reports_every_stage_in_order() -> None:
    config = build_config(
        (
            "test",
            simulated_settings(
                warmup={"n_warmup": 2, "thermal_floor_s": 30}, energy={"meter": "nvml", "baseline_s": 5}
            ),
        )
    )
    recorder = Recorder()
    with simulated_gpus([SimulatedGpu()]):
        session = ExperimentSession()
        session.progress = recorder
        result = session.run(config, "t::progress")
    assert result.status == "passed", result.error
    stages = [event[0].split(" ")[0] for event in recorder.events]
    assert stages == [
        "pre-flight",
        "idle",
        "loading",
        "warmup",
        "warmup",
        "thermal",
        "calibrating",  # a pass of 2 x 4 tokens is far under the minimum window: timed apart
        "repeat",
        "repeat",
    ]
    assert result.window_calibration is not None and result.window_calibration.startswith("timed")
    assert ("idle baseline", None, None, 5.0) in recorder.events
    assert ("thermal floor", None, None, 30.0) in recorder.events
    assert recorder.events[-2:] == [("repeat", 1, 2, None), ("repeat", 2, 2, None)]


CONFTEST = """
import contextlib
from pytest_llem.testing import SimulatedGpu, simulated_gpus

_simulation = contextlib.ExitStack()

def pytest_configure(config):  # the whole session, its model cache's release included
    _simulation.enter_context(simulated_gpus([SimulatedGpu()]))

def pytest_unconfigure(config):
    _simulation.close()
"""

TEST_FILE = """
import pytest
from rich.console import Console

@pytest.mark.llem(engine="simulated", model="sim", device="cpu", n_prompts=2, max_new_tokens=4,
                  repeats=2, warmup={"n_warmup": 1, "thermal_floor_s": 0}, energy="estimate")
@pytest.mark.parametrize("batch_size", [1, 2])
def test_sim(llem, batch_size):
    llem.run(batch_size=batch_size)

def test_plain():
    pass
"""


@pytest.fixture(scope="module", autouse=True)
def _simulation_imports() -> None:
    """Import what the inner sessions import (the simulation's Zeus and CodeCarbon, pandas)
    before the in-process pytester runs: modules first imported inside such a run are dropped
    after it, and pandas does not survive being imported twice in one process."""
    import pandas  # noqa: F401

    with simulated_gpus([SimulatedGpu()]):
        pass


def _stepping_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(0, 10)  # each reading 10 s after the previous one: every update is due
    monkeypatch.setattr(progress, "CLOCK", lambda: float(next(ticks)))


def _session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[pytest.RunResult, list[str]]:
    monkeypatch.setattr(progress.Heartbeat, "start", lambda self: None)  # only the lifecycle prints
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--llem-dir", str(pytester.path / ".llem"), *args)
    result.assert_outcomes(passed=3)
    return result, [line for line in result.outlines if "[llem]" in line]


def test_a_ci_log_shows_experiment_k_of_n_and_each_stage(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stepping_clock(monkeypatch)
    result, _ = _session(pytester, monkeypatch)
    result.stdout.fnmatch_lines(
        [
            "*[[]llem[]] experiment 1/2 test_sim[[]1[]] | warmup 1/1*",
            "*[[]llem[]] experiment 1/2 test_sim[[]1[]] | repeat 2/2*",
            "*[[]llem[]] experiment 2/2 test_sim[[]2[]] | repeat 1/2*",
        ]
    )


def test_at_most_one_line_per_interval_in_a_ci_log(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "CLOCK", lambda: 0.0)  # time stands still: only the first line
    _, lines = _session(pytester, monkeypatch)
    assert lines == ["[llem] experiment 1/2 test_sim[1] | pre-flight (model lookup or conversion) | 0 s"]


def test_quiet_runs_show_no_progress(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _stepping_clock(monkeypatch)
    _, lines = _session(pytester, monkeypatch, "-q")
    assert lines == []


def test_with_capture_off_the_test_s_output_and_progress_stay_whole_lines(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stepping_clock(monkeypatch)
    monkeypatch.setattr(progress.Heartbeat, "start", lambda self: None)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TEST_FILE.replace("    llem.run(", "    print('output of the test')\n    llem.run("))
    result = pytester.runpytest("-s", "-p", "no:cacheprovider", "--llem-dir", str(pytester.path / ".llem"))
    result.assert_outcomes(passed=3)
    # pytest itself puts a test's first print after the previous test's "."; never inside a [llem] line
    assert sum(line.endswith("output of the test") for line in result.outlines) == 2
    assert not [line for line in result.outlines if "[llem]" in line and not line.startswith("[llem]")]
    assert any(line.startswith("[llem] experiment 2/2 test_sim[2] | repeat") for line in result.outlines)


def test_on_a_terminal_the_status_line_is_transient_and_pytest_s_line_is_resumed() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    live = LiveStatus(console, column=lambda: 10)  # pytest wrote "test_x.py " (10 columns)
    live.begin_experiment("test_a", 1, 1)
    live.update("repeat", 1, 2)
    live.end_experiment()
    written = out.getvalue()
    assert written.startswith("\n")  # below pytest's line, which stays intact
    assert "[llem] experiment 1/1 test_a | repeat 1/2" in written
    assert written.endswith("\x1b[2K\x1b[11G\x1b[1A")  # erased, then back to the end of pytest's line


SKIPPING_FILE = """
import pytest

pytestmark = pytest.mark.llem(engine="simulated", model="sim", device="cpu", n_prompts=2, max_new_tokens=4,
                              repeats=2, warmup={"n_warmup": 1, "thermal_floor_s": 0}, energy="estimate")

def test_first(llem):
    llem.run()

@pytest.mark.skipif("True", reason="judged by pytest at setup")
def test_string_skipif(llem):
    llem.run()

def test_skip_in_body(llem):
    pytest.skip("engine missing")

def test_second(llem):
    llem.run()

def test_run_then_skip(llem):
    llem.run()
    pytest.skip("measured, then skipped")

@pytest.mark.skipif(True, reason="known at collection")
def test_skip_marked(llem):
    llem.run()

def test_deselected(llem):
    llem.run()

def test_plain():
    pass
"""


def test_skipped_and_deselected_tests_are_not_counted_as_experiments(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stepping_clock(monkeypatch)
    monkeypatch.setattr(progress.Heartbeat, "start", lambda self: None)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_skipping=SKIPPING_FILE)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--llem-dir", str(pytester.path / ".llem"), "-k", "not deselected"
    )
    result.assert_outcomes(passed=3, skipped=4, deselected=1)
    shown = {" ".join(line.split()[1:4]) for line in result.outlines if line.startswith("[llem] experiment")}
    # collected: 7 llem tests, one deselected, one sure to skip -> 5; then two skip before they
    # measure (at setup, in the body) and give their numbers back; a test that measured and
    # then skipped remains an experiment
    assert shown == {
        "experiment 1/5 test_first",
        "experiment 2/3 test_second",
        "experiment 3/3 test_run_then_skip",
    }


FIGURES_ONLY_FILE = """
import pytest

pytestmark = pytest.mark.llem(engine="simulated", model="sim", device="cpu", n_prompts=2, max_new_tokens=4,
                              repeats=2, warmup={"n_warmup": 1, "thermal_floor_s": 0}, energy="estimate")

def test_first(llem):
    llem.run()

def test_figures_only(llem):
    llem.record_figure("overhead", 1.0)

def test_second(llem):
    llem.run()
"""


def test_a_test_that_only_records_figures_is_not_counted_as_an_experiment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stepping_clock(monkeypatch)
    monkeypatch.setattr(progress.Heartbeat, "start", lambda self: None)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_figures=FIGURES_ONLY_FILE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--llem-dir", str(pytester.path / ".llem"))
    result.assert_outcomes(passed=3)
    shown = {" ".join(line.split()[1:4]) for line in result.outlines if line.startswith("[llem] experiment")}
    # three tests take `llem`; the one that only records a figure gives its number back
    assert "experiment 1/3 test_first" in shown and "experiment 2/2 test_second" in shown


def test_under_xdist_the_controller_shows_every_workers_stage_on_one_line(tmp_path: Path) -> None:
    from pytest_llem.plugin.worker_progress import StatusFile, WorkersDisplay, workers_line

    clock = ManualClock()
    workers = {}
    for name in ("gw0", "gw1"):
        workers[name] = StatusFile(tmp_path / f"{name}.status")
        workers[name].clock = clock
    workers["gw0"].begin_experiment("test_a[1]", 1, None)
    workers["gw0"].update("repeat", 1, 3)
    clock.now = 2.0
    workers["gw1"].begin_experiment("test_b", 1, None)
    workers["gw1"].update("warmup", 2, 5)
    clock.now = 6.0  # the controller's clock: elapsed seconds keep counting between updates
    assert workers_line(tmp_path, clock.now) == (
        "[llem] gw0 experiment 1 test_a[1] | repeat 1/3 | 6 s · gw1 experiment 1 test_b | warmup 2/5 | 4 s"
    )
    out = io.StringIO()
    controller = PlainLines(out, interval_s=10.0, clock=clock)
    display = WorkersDisplay(controller, tmp_path)
    display.refresh()  # what its thread does once a second
    workers["gw0"].end_experiment()  # between experiments a worker shows nothing
    clock.now = 16.0
    display.refresh()
    assert _lines(out) == [
        "[llem] gw0 experiment 1 test_a[1] | repeat 1/3 | 6 s · gw1 experiment 1 test_b | warmup 2/5 | 4 s",
        "[llem] gw1 experiment 1 test_b | warmup 2/5 | 14 s",
    ]
    workers["gw1"].end_experiment()
    assert workers_line(tmp_path, clock.now) is None and not list(tmp_path.iterdir())
