"""Power limits and locked clocks as experiment settings, on simulated GPUs: set through NVML
after the idle baseline, in effect for warmup and every window, and put back on every way
out (the end, a failure, Ctrl-C); refused at pre-flight with the fix when NVML says no."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from factories import simulated_settings

from pytest_llem import ExperimentResult, ExperimentSession, RequestOutput, build_config
from pytest_llem.render.html.chromium import check_page, find_chromium
from pytest_llem.render.html.svg import Point, pareto_front
from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, Simulation, simulated_gpus

pytest_plugins = ["pytester"]

SIM = simulated_settings(max_new_tokens=100, min_window_s=0, energy={"meter": "nvml", "baseline_s": 1.0})


def _board(*, settable: bool = True, lost_at_s: float | None = None) -> SimulatedGpu:
    """A 300 W board with a 400 W limit; `settable` and `lost_at_s` as SimulatedGpu's own."""
    return SimulatedGpu(
        power_w=300.0, counter_period_s=0.0, power_limit_w=400.0, settable=settable, lost_at_s=lost_at_s
    )


def _run(board: SimulatedGpu, **settings: object) -> tuple[ExperimentResult, Simulation]:
    workload = SimulatedWorkload(seconds_per_token=0.01, prefill_seconds_per_token=0.0)
    with simulated_gpus([board], workload) as simulation:
        result = ExperimentSession().run(build_config(("test", {**SIM, **settings})), "t::p")
        return result, simulation


def test_a_lower_power_limit_holds_for_the_windows_and_is_restored_after() -> None:
    free, _ = _run(_board())
    board = _board()
    capped, simulation = _run(board, power_limit_w=150)
    assert capped.status == "passed", capped.error
    assert capped.config.power_limit_w == 150
    # set after the idle baseline (taken at the board's own limit), restored at the end
    calls = [(call, value) for call, _, value in board.set_calls]
    assert calls == [("set_power_limit", 400.0), ("set_power_limit", 150.0), ("set_power_limit", 400.0)]
    assert board.power_limit_w == 400.0
    (set_at,) = [t for call, t, value in board.set_calls if value == 150.0]
    first_generate = next(t for _, t, _ in simulation.events("generate"))  # warmup's first
    assert capped.baseline_power_w == pytest.approx(300.0) and set_at < first_generate
    # the DVFS model: clock (150/300)^(1/3), power 150 W, each token 1/clock longer
    fraction = 0.5 ** (1 / 3)
    assert capped.average_power_w == pytest.approx(150.0, rel=1e-3)
    assert capped.time_per_output_token_s == pytest.approx(free.time_per_output_token_s / fraction, rel=1e-6)
    assert capped.energy_per_output_token_j == pytest.approx(
        free.energy_per_output_token_j * fraction**2, rel=1e-3
    )  # less energy per token, more time: the trade-off a sweep shows


def test_locked_clocks_slow_the_board_and_are_unlocked_after() -> None:
    board = _board()
    locked, _ = _run(board, gpu_clocks_mhz=705)  # half of the board's 1410 MHz
    assert locked.status == "passed", locked.error
    assert [call for call, _, _ in board.set_calls][-2:] == ["lock_clocks", "reset_clocks"]
    assert board.locked_clock_mhz is None
    assert locked.average_power_w == pytest.approx(300.0 * 0.5**3, rel=1e-3)


def test_a_failed_experiment_and_ctrl_c_restore_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the engine broke mid-window")

    board = _board()
    workload = SimulatedWorkload(seconds_per_token=0.01, prefill_seconds_per_token=0.0)
    with simulated_gpus([board], workload) as simulation:
        session = ExperimentSession()
        config = build_config(("test", {**SIM, "power_limit_w": 200}))
        monkeypatch.setattr(simulation.backend, "generate", failing)
        failed = session.run(config, "t::fails")
        assert failed.status == "failed" and "the engine broke" in (failed.error or "")
        assert board.power_limit_w == 400.0

        def interrupted(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(simulation.backend, "generate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            session.run(config, "t::ctrl-c")
        assert board.power_limit_w == 400.0
        assert [value for _, _, value in board.set_calls][-2:] == [200.0, 400.0]


def test_a_restore_that_fails_is_reported_loudly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    board = _board()
    workload = SimulatedWorkload(seconds_per_token=0.01, prefill_seconds_per_token=0.0)
    with simulated_gpus([board], workload) as simulation:
        original = simulation.backend.generate

        # whatever the session passes, to the engine's own generate unchanged
        def lose_permission(*args: Any, **kwargs: Any) -> list[RequestOutput]:
            board.settable = False  # e.g. the capability dropped mid-run
            return original(*args, **kwargs)

        monkeypatch.setattr(simulation.backend, "generate", lose_permission)
        with pytest.warns(
            RuntimeWarning, match="could not restore a GPU setting: gpu0: restoring the power limit"
        ):
            result = ExperimentSession().run(build_config(("test", {**SIM, "power_limit_w": 200})), "t::r")
    assert result.status == "passed"
    assert "sudo nvidia-smi -i 0 -pl 400" in capsys.readouterr().err
    assert board.power_limit_w == 200.0  # it really is still capped: the message says so


@pytest.mark.parametrize(
    ("board", "settings", "message"),
    [
        (
            _board(settable=False),
            {"power_limit_w": 200},
            "gpu0: setting the power limit needs permission: run as root",
        ),
        (
            _board(),
            {"power_limit_w": 50},
            "power_limit_w=50: gpu0 accepts 100-400 W; choose a limit in that range",
        ),
        (
            _board(),
            {"power_limit_w": 200, "device": "cpu", "energy": {"meter": "estimate"}},
            "power_limit_w is a GPU setting",
        ),
    ],
)
def test_preflight_refuses_what_cannot_be_set_with_the_fix(
    board: SimulatedGpu, settings: dict[str, object], message: str
) -> None:
    result, _ = _run(board, **settings)
    assert result.status == "error" and message in (result.error or "")
    assert board.power_limit_w == 400.0 and [v for _, _, v in board.set_calls if v != 400.0] == []


def test_the_pareto_front_is_the_points_nothing_beats_on_both_axes() -> None:
    points = [Point("a", 1.0, 5.0), Point("b", 2.0, 3.0), Point("c", 3.0, 4.0), Point("d", 4.0, 1.0)]
    assert pareto_front(points) == [0, 1, 3]  # c is beaten by b on both


SWEEP_CONFTEST = """
import json, os
import pytest

@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    import pynvml  # the session's simulated NVML, installed by LLEM_SIMULATED_GPUS
    session.config._board = pynvml.gpus[0]

def pytest_unconfigure(config):
    board = config._board
    with open("board.json", "w") as f:
        json.dump({"limit": board.power_limit_w, "calls": [[c, v] for c, _, v in board.set_calls]}, f)
"""

SWEEP = """
import os, signal
import pytest

SETTINGS = dict(engine="simulated", model="sim", device="cuda:0", n_prompts=2, max_new_tokens=64, repeats=2,
                warmup={"n_warmup": 1, "thermal_floor_s": 0}, energy={"meter": "nvml", "baseline_s": 0})

@pytest.mark.llem(**SETTINGS)
@pytest.mark.parametrize("power_limit_w", [150, 225, 300])
def test_sweep(llem, power_limit_w):
    llem.run(power_limit_w=power_limit_w)

@pytest.mark.llem(**SETTINGS)
def test_fails_after_measuring(llem):
    llem.run(power_limit_w=200)
    assert False, "the test's own assertion"

@pytest.mark.llem(**SETTINGS)
def test_interrupted(llem):
    llem.measure(lambda: os.kill(os.getpid(), signal.SIGINT), output_tokens=1, power_limit_w=120)

@pytest.mark.llem(**SETTINGS)
def test_terminated(llem):  # what Slurm's scancel or a job's time limit sends first
    llem.measure(lambda: os.kill(os.getpid(), signal.SIGTERM), output_tokens=1, power_limit_w=110)
"""


def test_a_sweep_of_three_limits_restores_after_each_and_after_sigint_and_sigterm(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLEM_SIMULATED_GPUS", "1")
    monkeypatch.setenv("LLEM_SIMULATED_CLOCK", "1")
    pytester.makeconftest(SWEEP_CONFTEST)
    pytester.makepyfile(test_sweep=SWEEP)
    ordered = ["-p", "no:cacheprovider", "-p", "no:randomly"]
    result = pytester.runpytest_subprocess(
        *ordered, "-k", "not interrupted and not terminated", "--llem-html=report.html"
    )
    result.assert_outcomes(passed=3, failed=1)
    board = json.loads((pytester.path / "board.json").read_text())
    assert board["limit"] == 400.0  # restored after the normal ends and after the failing test
    set_values = [value for call, value in board["calls"] if call == "set_power_limit"]
    assert [v for v in set_values if v != 400.0] == [150.0, 225.0, 300.0, 200.0]
    assert set_values[-1] == 400.0
    html = (pytester.path / "report.html").read_text()
    assert 'data-chart="pareto"' in html and html.count('class="data pareto"') >= 2
    if find_chromium() is not None:  # .ci/run installs it; rendered as a reader's browser would
        check = check_page(pytester.path / "report.html", pytester.path / "report.png", (1400, 2400))
        assert check.console == []
        rendered = {chart.chart_id: chart.data_elements for chart in check.charts}
        assert rendered["pareto"] == 4  # the three limits and the failing test's 200 W
        assert check.dom.count('class="data pareto"') >= 2 and 'class="pareto-front"' in check.dom

    for name, limit in (("interrupted", 120.0), ("terminated", 110.0)):  # SIGINT, then SIGTERM
        stopped = pytester.runpytest_subprocess(*ordered, "-k", name)
        assert stopped.ret == pytest.ExitCode.INTERRUPTED, name
        board = json.loads((pytester.path / "board.json").read_text())
        assert [v for c, v in board["calls"] if c == "set_power_limit"][-2:] == [limit, 400.0], name
        assert board["limit"] == 400.0, name  # signalled in the middle of a window: put back
    # (each test sends its signal to itself inside the window)
    assert int(signal.SIGTERM) != int(signal.SIGINT)


def test_a_board_lost_mid_experiment_fails_it_and_its_restore_is_reported_not_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    board = _board(lost_at_s=1.5)  # after the idle baseline (1 s) and the setting, before the end
    with pytest.warns(RuntimeWarning, match="could not restore a GPU setting: .*GPU_IS_LOST"):
        result, _ = _run(board, power_limit_w=200)
    assert result.status == "failed" and "GPU_IS_LOST" in (result.error or "")
    assert "sudo nvidia-smi -i 0 -pl 400" in capsys.readouterr().err
