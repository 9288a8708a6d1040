"""LLEM_SIMULATED_GPUS=N: every process of a session sees N simulated GPUs (the session, its
xdist workers, the A/B base), on the wall clock. Run in subprocesses, as users run it."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SUITE = """
import pytest

# on the wall clock: no thermal floor (a GPU's default is 60 s), and enough tokens (0.5 s at the
# simulated engine's 2 ms a token) for the 100 ms energy counter to move
SETTINGS = dict(engine="simulated", model="sim", n_prompts=4, max_new_tokens=64, repeats=1,
                warmup={"n_warmup": 0, "thermal_floor_s": 0}, energy={"meter": "nvml", "baseline_s": 0})

@pytest.mark.llem(device="cuda:1", **SETTINGS)
def test_second_gpu(llem):
    result = llem.run()
    assert result.status == "passed", result.error
    assert result.device == "cuda:1" and result.energy.source == "nvml" and result.energy.measured
    assert set(result.energy.per_device_j) == {"gpu1"} and result.energy_j > 0  # only its own board

def test_every_process_sees_the_simulated_boards():
    import pynvml
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 3
    assert pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(2)) == "NVIDIA A100-SXM4-80GB"
"""


def test_a_session_and_its_xdist_workers_see_the_simulated_gpus(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLEM_SIMULATED_GPUS", "3")
    pytester.makepyfile(test_sim=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    # the workers are processes of their own: each reads the variable
    workers = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-k", "every_process")
    workers.assert_outcomes(passed=1)


@pytest.mark.parametrize("value", ["0", "two", "65", "-1"])
def test_a_bad_count_is_one_usage_error_naming_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LLEM_SIMULATED_GPUS", value)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: LLEM_SIMULATED_GPUS='{value}' is invalid: expected a whole number*"]
    )
