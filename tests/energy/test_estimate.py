"""The `estimate` meter is honest: it counts the whole process tree, its assumptions describe
the figure beside them, it takes no pseudo-baseline, and it flags a busy machine."""

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import psutil
import pytest
from factories import known, simulated_settings

from pytest_llem import ExperimentSession, build_config
from pytest_llem.energy.estimate import BASELINE_SKIPPED, EstimateMeter
from pytest_llem.hardware import cpu_time
from pytest_llem.hardware.cpu_time import (
    CONTENTION_SHARE,
    CpuSnapshot,
    MachineCpu,
    others_share,
    read_machine_cpu,
)
from pytest_llem.measure.baseline import figure_settings
from pytest_llem.render.numbers import energy_text
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.testing import SimulatedGpu, simulated_gpus

# A child that burns a fixed amount of CPU (about half a second), says so, then idles until told
# to exit: its CPU time is stable when both the meter and psutil read it.
BURN = "x = 0\nfor i in range(6_000_000):\n    x += i * i\nprint('burnt', flush=True)\nimport sys; sys.stdin.read()\n"


class _ChildrenTimes(Protocol):
    """What psutil's `Process.cpu_times()` says of the reaped children."""

    @property
    def children_user(self) -> float: ...

    @property
    def children_system(self) -> float: ...


def _children_cpu(times: _ChildrenTimes) -> float:
    return times.children_user + times.children_system


def test_the_estimate_counts_a_child_process_like_psutil_does() -> None:
    meter = EstimateMeter(10.0)
    own_before = time.process_time()
    meter.start()
    child = subprocess.Popen(
        [sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "burnt"
        child_process = psutil.Process(child.pid)  # the child idles now: stable readings
        child_times = child_process.cpu_times()
        child_cpu = cpu_time._descendant_cpu_s(child_process)  # its CPU-time clock, in ns
        reading = meter.stop()
        own_after = time.process_time()
    finally:
        child.communicate("")
    # psutil's /proc ticks (10 ms each, truncated) agree with the clock the meter reads
    assert child_cpu is not None
    assert child_times.user + child_times.system <= child_cpu <= child_times.user + child_times.system + 0.02
    counted = reading.info.assumptions["cpu_seconds"]
    # exact: the meter's window lies inside [own_before, own_after] and the child's counters
    # did not move between psutil's reading and the meter's
    own = own_after - own_before
    assert child_cpu <= counted <= child_cpu + own
    assert counted == pytest.approx(own + child_cpu, rel=0.02)
    assert reading.energy_j == pytest.approx(10.0 * counted)


def test_a_child_that_exits_and_is_reaped_inside_the_window_still_counts() -> None:
    me = psutil.Process()
    meter = EstimateMeter(10.0)
    reaped_before, own_before = _children_cpu(me.cpu_times()), time.process_time()
    meter.start()
    child = subprocess.Popen(
        [sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child.communicate("")  # burns, then exits and is waited for: its time moves to children_*
    reading = meter.stop()
    own, reaped = time.process_time() - own_before, _children_cpu(me.cpu_times()) - reaped_before
    assert reaped > 0
    counted = reading.info.assumptions["cpu_seconds"]
    assert reaped <= counted <= reaped + own
    assert counted == pytest.approx(own + reaped, rel=0.02)


def _snapshots(*values: tuple[float, float, float, float]) -> Callable[[], CpuSnapshot]:
    """Hand-built snapshots: (wall_s, tree_cpu_s, machine_busy_s, machine_total_s)."""
    return iter([CpuSnapshot(w, t, MachineCpu(b, total)) for w, t, b, total in values]).__next__


def test_cpu_contention_is_flagged_with_the_share_other_processes_used() -> None:
    # 10 s on 2 CPUs (20 CPU-s): this tree used 6, the machine was busy 16 -> others used 10/20
    meter = EstimateMeter(10.0, snapshot=_snapshots((0, 0, 100, 1000), (10, 6, 116, 1020)))
    meter.start()
    reading = meter.stop()
    assert reading.energy_j == pytest.approx(60.0)
    assert reading.info.assumptions["other_processes_cpu_share"] == pytest.approx(0.5)
    assert reading.info.assumptions["busy_cores"] == pytest.approx(0.6)
    [warning] = reading.warnings
    assert warning.flag == "cpu_contention"
    assert warning.value == pytest.approx(0.5) and warning.threshold == CONTENTION_SHARE
    assert "50%" in warning.message


def test_the_estimate_reads_mid_window_from_the_same_cpu_seconds() -> None:
    meter = EstimateMeter(
        10.0, snapshot=_snapshots((0, 0, 100, 1000), (5, 2.5, 108, 1010), (10, 6, 116, 1020))
    )
    assert meter.read_j() is None  # no window open
    meter.start()
    assert meter.read_j() == pytest.approx(25.0)  # 2.5 CPU seconds x 10 W
    assert meter.stop().energy_j == pytest.approx(60.0)


def test_a_quiet_machine_raises_no_contention_warning() -> None:
    # others used 1 of 20 CPU-s: 5%, under the 10% threshold
    meter = EstimateMeter(10.0, snapshot=_snapshots((0, 0, 100, 1000), (10, 6, 107, 1020)))
    meter.start()
    assert meter.stop().warnings == []


def test_others_share_is_unknown_without_proc_stat_and_never_negative() -> None:
    start = CpuSnapshot(0.0, 0.0, None)
    assert others_share(start, CpuSnapshot(1.0, 1.0, None)) is None
    # counters tick independently: this tree may appear to use more than the machine's busy time
    assert others_share(CpuSnapshot(0, 0, MachineCpu(0, 0)), CpuSnapshot(1, 2.0, MachineCpu(1.9, 4))) == 0.0


def test_proc_stat_is_read_as_busy_and_total_seconds(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    hz = __import__("os").sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    stat.write_text(f"cpu  {hz * 3} 0 {hz} {hz * 10} {hz} 0 0 0 {hz} 0\ncpu0 1 2 3 4\n")
    machine = read_machine_cpu(stat)
    assert machine == MachineCpu(busy_s=4.0, total_s=15.0)
    assert read_machine_cpu(tmp_path / "absent") is None


SIM_CPU = simulated_settings(
    device="cpu",
    max_new_tokens=8,
    repeats=3,
    warmup={"n_warmup": 0, "thermal_floor_s": 0},
    energy={"meter": "estimate", "watts_per_core": 7.0},
)


def test_assumptions_describe_the_mean_figure_and_no_pseudo_baseline_is_taken() -> None:
    with simulated_gpus([SimulatedGpu()]):
        result = ExperimentSession().run(build_config(("test", SIM_CPU)), "t::estimate")
    assert result.status == "passed", result.error
    assert result.energy is not None
    assumptions = result.energy.assumptions
    # energy_j is the mean of the windows, and so is every per-window figure beside it
    mean_cpu = sum(known(r.energy_j for r in result.repeats)) / len(result.repeats) / 7.0
    assert assumptions["cpu_seconds"] == pytest.approx(mean_cpu)
    assert result.energy_j == pytest.approx(7.0 * assumptions["cpu_seconds"])
    assert assumptions["watts_per_busy_core"] == 7.0
    # this process's CPU time during a sleep is no device baseline: skipped, and the reason kept
    assert result.baseline_power_w is None and result.energy_adjusted_j is None
    assert result.baseline_skipped_reason == BASELINE_SKIPPED
    assert "energy_estimated" in result.warning_flags


def test_every_setting_that_changes_a_baseline_is_in_its_cache_key() -> None:
    base = figure_settings(EnergyConfig(), 2.0)
    assert figure_settings(EnergyConfig(watts_per_core=5.0), 2.0) != base
    assert figure_settings(EnergyConfig(sample_hz=1.0), 2.0) != base
    assert figure_settings(EnergyConfig(), 30.0) != base
    # where and how long it is kept does not change the figure
    assert figure_settings(EnergyConfig(baseline_ttl_s=5.0, baseline_cache_path="x.json"), 2.0) == base


@pytest.mark.parametrize(
    ("value_j", "measured", "text"),
    [
        (0.000371234, False, "371 µJ"),
        (0.37123, False, "371 mJ"),
        (0.99996, False, "1.00 J"),
        (1234.5, False, "1.23 kJ"),
        (0.37123, True, "371.2 mJ"),
    ],
)
def test_estimated_figures_are_printed_with_three_significant_digits(
    value_j: float, measured: bool, text: str
) -> None:
    assert energy_text(value_j, measured) == text


BURN_THEN_WAIT = """
import sys, time
while time.process_time() < 0.3:  # burn 0.3 CPU seconds, however long that takes
    pass
print("burnt", flush=True)
sys.stdin.read()  # then block, using no CPU, until the parent closes our stdin
"""


def test_a_child_left_out_of_the_tree_is_not_counted() -> None:
    """A/B's base worker is the head's child but measures its own windows: the head's
    estimate leaves it out. No timing: the child reports when it has burnt its CPU time."""
    from pytest_llem.hardware import cpu_time

    child = subprocess.Popen(
        [sys.executable, "-c", BURN_THEN_WAIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "burnt\n"
        with_child = cpu_time.process_tree_cpu_s()
        cpu_time.exclude_from_tree(child.pid)
        without_child = cpu_time.process_tree_cpu_s()
        cpu_time.include_in_tree(child.pid)
        again = cpu_time.process_tree_cpu_s()
    finally:
        cpu_time.include_in_tree(child.pid)
        child.communicate("")
    assert with_child - without_child >= 0.25  # the child's 0.3 s, in 10 ms ticks
    assert again - without_child >= 0.25
