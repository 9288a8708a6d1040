"""Real Zeus (`zeus.monitor.ZeusMonitor`, no stand-in) and the nvml meter against the
simulated NVML on its simulated clock: both agree with the simulated ground truth, and both
flag a counter that resets mid-window instead of passing a wrong figure on."""

import math
from pathlib import Path

import pytest
from factories import simulated_clock, simulated_settings

from pytest_llem import ExperimentSession, build_config
from pytest_llem.energy import DeviceSet, select_meter, zeus_meter
from pytest_llem.energy import nvml as nvml_meter
from pytest_llem.energy.base import EnergyMeter, EnergyReading
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.errors import MeasurementError, MeterUnavailable
from pytest_llem.testing import Function, SimulatedGpu, SimulatedWorkload, Simulation, simulated_gpus

pytest.importorskip("zeus.monitor")

# a busy GPU: 180-300 W with a 0.7 s ripple, so no window sees a flat trace
RIPPLE = Function(lambda t: 240.0 + 60.0 * math.sin(2.0 * math.pi * t / 0.7))


def _meters(sim: Simulation) -> dict[str, EnergyMeter]:
    return {
        "zeus": zeus_meter.create(EnergyConfig(), DeviceSet((0,))),
        "nvml": nvml_meter.create(EnergyConfig(), DeviceSet((0,))),
    }


def _both_windows(
    sim: Simulation, meters: dict[str, EnergyMeter], seconds: float
) -> tuple[dict[str, EnergyReading], float]:
    """One window of both meters over the same simulated instants."""
    start = sim.clock.now()
    for meter in meters.values():
        meter.start()
    simulated_clock(sim.clock).advance(seconds)
    readings = {name: meter.stop() for name, meter in meters.items()}
    return readings, sim.nvml.true_energy_j(0, start, start + seconds)


@pytest.mark.parametrize("seconds", [1.0, 3.0, 10.0])
def test_real_zeus_and_nvml_agree_with_ground_truth_within_half_a_percent(seconds: float) -> None:
    with simulated_gpus([SimulatedGpu(power_w=RIPPLE)]) as sim:
        meters = _meters(sim)
        simulated_clock(sim.clock).advance(
            0.5
        )  # start on a 100 ms counter update, as a long run would on average
        readings, truth = _both_windows(sim, meters, seconds)
    for name, reading in readings.items():
        assert reading.energy_j == pytest.approx(truth, rel=0.005), name
        assert reading.warnings == [], name
        assert reading.info.source == name and reading.info.measured
    assert readings["zeus"].info.method == "ZeusMonitor window"
    assert readings["nvml"].info.method == "counter delta"


@pytest.mark.parametrize("seconds", [1.0, 3.0, 10.0])
def test_a_counter_reset_mid_window_is_flagged_by_both_and_the_figure_stays_right(seconds: float) -> None:
    with simulated_gpus([SimulatedGpu(power_w=RIPPLE)]) as sim:
        meters = _meters(sim)
        sim.nvml.gpus[0].counter_reset_at_s = sim.clock.now() + seconds / 2  # a driver reload
        readings, truth = _both_windows(sim, meters, seconds)
    for name, reading in readings.items():
        assert [w.flag for w in reading.warnings] == ["energy_counter_reset"], name
        assert reading.info.method == "power integration", name
        # 10 Hz polled power, trapezoids over a 0.7 s sine ripple: well within 0.5%
        assert reading.energy_j == pytest.approx(truth, rel=0.005), name
    assert "Zeus reported" not in readings["nvml"].warnings[0].message
    assert "counter delta was -" in readings["zeus"].warnings[0].message  # what Zeus alone would say


def test_a_reset_whose_delta_looks_positive_is_still_caught_by_the_poller() -> None:
    """The counter restarts near zero; after a long enough run it passes the start value, so
    the two-ended delta is positive and plausible-looking. The per-tick reads see the drop."""
    gpu = SimulatedGpu(power_w=300.0, counter_offset_mj=0, counter_reset_at_s=10.05, power_limit_w=None)
    with simulated_gpus([gpu]) as sim:
        meters = _meters(sim)
        simulated_clock(sim.clock).advance(10.0)  # counter at 3000 J
        readings, truth = _both_windows(sim, meters, 12.0)  # reset at 10.05, ends at 3000+ J again
    for name, reading in readings.items():
        assert [w.flag for w in reading.warnings] == ["energy_counter_reset"], name
        assert reading.energy_j == pytest.approx(truth, rel=0.005), name


def test_a_delta_beyond_the_board_power_limit_is_rejected_by_zeus_too() -> None:
    gpu = SimulatedGpu(power_w=200.0, power_limit_w=300.0, counter_jump=(1.05, 9_000_000))
    with simulated_gpus([gpu]) as sim:
        meter = zeus_meter.create(EnergyConfig(), DeviceSet((0,)))
        simulated_clock(sim.clock).advance(1.0)
        meter.start()
        simulated_clock(sim.clock).advance(2.0)
        reading = meter.stop()
    assert [w.flag for w in reading.warnings] == ["energy_delta_implausible"]
    assert reading.energy_j == pytest.approx(400.0)


def test_zeus_measures_the_right_gpu_with_uuids_in_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpus = [SimulatedGpu(power_w=100.0), SimulatedGpu(power_w=200.0), SimulatedGpu(power_w=300.0)]
    with simulated_gpus(gpus) as sim:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{gpus[2].uuid},{gpus[0].uuid}")
        meter = zeus_meter.create(EnergyConfig(), DeviceSet((0,)))
        meter.start()
        simulated_clock(sim.clock).advance(2.0)
        reading = meter.stop()
    assert reading.info.per_device_j == {"gpu0": pytest.approx(600.0)}  # physical GPU 2
    assert reading.warnings == []


def test_zeus_is_unavailable_at_selection_on_a_board_without_energy_counter() -> None:
    with simulated_gpus([SimulatedGpu(energy_counter=False)]):
        with pytest.raises(MeterUnavailable, match="gpu0 has no readable energy counter"):
            zeus_meter.create(EnergyConfig(), DeviceSet((0,)))
        meter, warnings = select_meter(EnergyConfig(meter="auto"), DeviceSet((0,)))
    assert meter.name == "nvml" and warnings == []  # auto moves on to the next meter


def test_auto_picks_real_zeus_on_a_gpu_with_a_counter() -> None:
    with simulated_gpus([SimulatedGpu()]):
        meter, warnings = select_meter(EnergyConfig(meter="auto"), DeviceSet((0,)))
    assert meter.name == "zeus" and warnings == []


def test_a_gpu_lost_mid_window_is_a_measurement_error_for_zeus() -> None:
    gpu = SimulatedGpu(lost_at_s=0.5)
    with simulated_gpus([gpu]) as sim:
        meter = zeus_meter.create(EnergyConfig(), DeviceSet((0,)))
        meter.start()
        simulated_clock(sim.clock).advance(1.0)
        with pytest.raises(MeasurementError, match=r"gpu0 is lost \(NVML_ERROR_GPU_IS_LOST"):
            meter.stop()


def test_a_session_with_zeus_gives_a_measured_result_and_timeseries(tmp_path: Path) -> None:
    settings = simulated_settings(
        max_new_tokens=100,
        energy={"meter": "zeus", "baseline_s": 30},  # simulated: no real wait
    )
    with simulated_gpus([SimulatedGpu(power_w=250.0)], SimulatedWorkload(seconds_per_token=0.025)):
        result = ExperimentSession(output_dir=tmp_path).run(build_config(("test", settings)), "t::zeus")
    assert result.status == "passed", result.error
    assert result.energy is not None and result.energy.source == "zeus" and result.energy.measured
    assert result.baseline_power_w == pytest.approx(250.0)
    assert result.energy_j == pytest.approx(250.0 * result.window_s, rel=0.02)
    assert result.timeseries_path is not None
