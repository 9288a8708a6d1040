"""The GPU path against the simulated NVML (pytest_llem.testing), on its simulated clock:
every window below is exact and takes no real time."""

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from factories import simulated_clock, simulated_settings

from pytest_llem import ExperimentSession, build_config
from pytest_llem.energy import DeviceSet, select_meter
from pytest_llem.energy import nvml as nvml_meter
from pytest_llem.energy.base import EnergyMeter, EnergyReading
from pytest_llem.hardware.sampler import TIMESERIES_COLUMNS
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.errors import MeasurementError, MeterUnavailable
from pytest_llem.testing import Function, SimulatedGpu, SimulatedWorkload, Simulation, Steps, simulated_gpus


def _window(sim: Simulation, meter: EnergyMeter, seconds: float) -> EnergyReading:
    meter.start()
    simulated_clock(sim.clock).advance(seconds)
    return meter.stop()


def test_counter_energy_equals_trace_integral_per_device_and_total() -> None:
    gpus = [
        SimulatedGpu(power_w=Steps([(0.0, 120.0), (0.6, 310.0), (1.1, 180.0)])),
        SimulatedGpu(power_w=Function(lambda t: 200.0 + 50.0 * (t % 1.0))),
    ]
    with simulated_gpus(gpus) as sim:
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0, 1)))
        simulated_clock(sim.clock).advance(0.2)  # windows start on a counter update (every 100 ms)
        reading = _window(sim, meter, 1.5)
    for index, label in enumerate(("gpu0", "gpu1")):
        expected = sim.nvml.true_energy_j(index, 0.2, 1.7)
        assert reading.info.per_device_j[label] == pytest.approx(expected, rel=1e-6)
    assert reading.energy_j == pytest.approx(sum(reading.info.per_device_j.values()))
    # the meter's creation probed each counter's step (a millisecond each): the reads still
    # find the counters' 0.2 s and 1.7 s updates
    assert reading.start_s == pytest.approx(0.202) and reading.end_s == pytest.approx(1.702)
    assert reading.info.measured is True and reading.info.source == "nvml"
    assert reading.info.method == "counter delta" and reading.warnings == []


def test_a_mid_window_read_is_the_counters_delta_of_every_board_so_far() -> None:
    gpus = [
        SimulatedGpu(power_w=150.0, counter_period_s=0.0),
        SimulatedGpu(power_w=250.0, counter_period_s=0.0),
    ]
    with simulated_gpus(gpus) as sim:
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0, 1)))
        meter.start()
        simulated_clock(sim.clock).advance(0.75)
        middle = meter.read_j()
        simulated_clock(sim.clock).advance(0.25)
        reading = meter.stop()
    assert middle == pytest.approx(400.0 * 0.75, abs=0.002)  # two boards, mJ counters
    assert reading.energy_j == pytest.approx(400.0, abs=0.002)


def test_a_board_without_counter_cannot_be_read_mid_window() -> None:
    with simulated_gpus([SimulatedGpu(energy_counter=False)]) as sim:
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0,)))
        meter.start()
        simulated_clock(sim.clock).advance(0.5)
        assert meter.read_j() is None  # polled power is a 1 s average: not exact at an instant
        meter.stop()


def test_boards_without_counter_integrate_polled_power_and_say_power_is_averaged() -> None:
    gpu = SimulatedGpu(power_w=Steps([(0.0, 100.0), (0.5, 300.0)]), energy_counter=False)
    with simulated_gpus([gpu]) as sim:
        meter = nvml_meter.create(EnergyConfig(sample_hz=50), DeviceSet((0,)))
        reading = _window(sim, meter, 1.2)
    # samples every 20 ms: the trapezoid misses at most one 20 ms slice of the 200 W step
    assert reading.energy_j == pytest.approx(sim.nvml.true_energy_j(0, 0.0, 1.2), abs=200.0 * 0.02)
    assert reading.info.method == "power integration"
    assert [w.flag for w in reading.warnings] == ["power_integration"]
    assert "1 s average" in reading.warnings[0].message


def test_counter_reset_mid_window_warns_and_falls_back_to_power_integration() -> None:
    with simulated_gpus([SimulatedGpu(power_w=250.0, counter_reset_at_s=0.5)]) as sim:
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0,)))
        reading = _window(sim, meter, 1.0)
    assert [w.flag for w in reading.warnings] == ["energy_counter_reset"]
    assert reading.energy_j == pytest.approx(250.0)
    assert reading.info.method == "power integration"


def test_a_counter_jump_beyond_the_power_limit_is_rejected() -> None:
    gpu = SimulatedGpu(power_w=200.0, power_limit_w=300.0, counter_jump=(0.45, 5_000_000))
    with simulated_gpus([gpu]) as sim:
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0,)))
        reading = _window(sim, meter, 2.0)
    assert [w.flag for w in reading.warnings] == ["energy_delta_implausible"]
    assert reading.warnings[0].value == pytest.approx(5400.0) and reading.warnings[0].threshold == 600.0
    assert reading.energy_j == pytest.approx(400.0)


def test_a_device_lost_mid_window_is_a_measurement_error_that_says_so() -> None:
    gpu = SimulatedGpu(power_w=200.0, lost_at_s=0.6)
    with simulated_gpus([gpu]) as sim:
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0,)))
        with pytest.raises(MeasurementError, match=r"gpu0 is lost .*NVML_ERROR_GPU_IS_LOST"):
            _window(sim, meter, 1.0)


def test_a_lost_device_is_unavailable_at_selection_not_unsupported() -> None:
    with simulated_gpus([SimulatedGpu(lost_at_s=0.0)]), pytest.raises(MeterUnavailable, match="gpu0 is lost"):
        nvml_meter.create(EnergyConfig(), DeviceSet((0,)))


def test_query_errors_mid_window_are_survived() -> None:
    gpu = SimulatedGpu(power_w=200.0, energy_counter=False, query_errors={"power": (0.2, 0.5)})
    with simulated_gpus([gpu]) as sim:
        meter = nvml_meter.create(EnergyConfig(sample_hz=50), DeviceSet((0,)))
        reading = _window(sim, meter, 1.0)
    # constant power: the gap is bridged by the neighbouring samples
    assert reading.energy_j == pytest.approx(200.0)


@pytest.mark.parametrize("use_uuids", [False, True])
def test_only_gpus_in_use_are_measured_with_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, use_uuids: bool
) -> None:
    gpus = [SimulatedGpu(power_w=100.0), SimulatedGpu(power_w=200.0), SimulatedGpu(power_w=300.0)]
    with simulated_gpus(gpus) as sim:
        entries = [sim.nvml.gpus[i].uuid for i in (2, 0)] if use_uuids else ["2", "0"]
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(entries))
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0,)))  # cuda:0 is physical GPU 2
        reading = _window(sim, meter, 0.5)
    assert reading.info.per_device_j == {"gpu0": pytest.approx(150.0)}


def test_missing_device_and_missing_library_are_unavailable_with_a_fix() -> None:
    with simulated_gpus([SimulatedGpu()]), pytest.raises(MeterUnavailable, match=r"CUDA device\(s\) \[1\]"):
        nvml_meter.create(EnergyConfig(), DeviceSet((1,)))
    with (
        simulated_gpus([SimulatedGpu(power_w=None, energy_counter=False)]),
        pytest.raises(MeterUnavailable, match="NOT_SUPPORTED for both energy and power"),
    ):
        nvml_meter.create(EnergyConfig(), DeviceSet((0,)))
    with pytest.raises(MeterUnavailable, match="runs on no GPU"):
        nvml_meter.create(EnergyConfig(), DeviceSet(()))


def test_auto_prefers_nvml_on_gpu_runs_without_zeus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    with simulated_gpus([SimulatedGpu()]):
        meter, warnings = select_meter(EnergyConfig(meter="auto"), DeviceSet((0,)))
    assert meter.name == "nvml"
    assert warnings == []


def test_one_poller_reads_power_at_most_sample_hz_per_device_for_meter_and_timeseries(tmp_path: Path) -> None:
    """The meter's poller also feeds the timeseries: 10 Hz means 10 power reads a second per
    GPU in a window, not one stream per consumer."""
    workload = SimulatedWorkload(seconds_per_token=0.05, prefill_seconds_per_token=0.0)
    settings = {**SIM, "energy": {"meter": "nvml", "baseline_s": 0, "sample_hz": 10}}
    with simulated_gpus([SimulatedGpu(), SimulatedGpu()], workload) as sim:
        session = ExperimentSession(output_dir=tmp_path)
        session.meter(build_config(("test", settings)).energy, DeviceSet((0,)))  # selection probes
        before = sim.nvml.calls.copy()
        result = session.run(build_config(("test", settings)), "tests::poll")
    assert result.status == "passed", result.error
    window_s = result.repeats[0].window_s
    assert window_s == pytest.approx(2 * 100 * 0.05)  # 2 prompts x 100 tokens x 50 ms
    power_reads = sim.nvml.calls[("power", 0)] - before[("power", 0)]
    ticks = int(window_s * 10) + 1  # one at the window's start, then every 100 ms
    warmup_ticks = 0  # warmup runs outside any window
    assert power_reads == ticks + warmup_ticks
    assert sim.nvml.calls[("power", 1)] == before[("power", 1)]  # the GPU not in use is not polled
    assert result.repeats[0].sample_count == ticks


SIM = simulated_settings(
    max_new_tokens=100,
    repeats=1,
    energy={"meter": "nvml", "baseline_s": 0.3},
    min_window_s=0,  # one pass per window: the windows' lengths below are of one pass
)


def test_window_energy_and_window_s_cover_the_same_instants() -> None:
    """window_s is the span between the meter's own counter reads, not a second clock."""
    workload = SimulatedWorkload(seconds_per_token=0.0125)
    gpu = SimulatedGpu(power_w=Function(lambda t: 100.0 + 10.0 * t), counter_period_s=0.0)
    with simulated_gpus([gpu], workload) as sim:
        result = ExperimentSession().run(build_config(("test", {**SIM, "repeats": 3})), "tests::instants")
    assert result.status == "passed", result.error
    reads = sim.nvml.energy_reads[0]
    for repeat in result.repeats:
        spans = [(t1 - t0, (e1 - e0) / 1000.0) for t0, e0 in reads for t1, e1 in reads if t1 > t0]
        assert any(
            span == pytest.approx(repeat.window_s) and joules == pytest.approx(repeat.energy_j, abs=1e-3)
            for span, joules in spans
        )


def test_not_supported_temperature_and_utilisation_give_nulls_and_a_complete_result(tmp_path: Path) -> None:
    gpus = [
        SimulatedGpu(power_w=220.0, temperature_c=None, utilisation_pct=None),
        SimulatedGpu(power_w=150.0),
    ]
    workload = SimulatedWorkload(seconds_per_token=0.0125)  # 2 x 100 tokens = 2.5 s window
    with simulated_gpus(gpus, workload):
        session = ExperimentSession(output_dir=tmp_path)
        result = session.run(build_config(("test", SIM)), "tests::gpu0")
        other = session.run(build_config(("test", {**SIM, "device": "cuda:1"})), "tests::gpu1")
    assert result.status == "passed", result.error
    assert result.energy is not None and result.energy.measured
    # the counter moves every 100 ms, like the real one: within one update of the window
    assert result.energy_j == pytest.approx(220.0 * result.window_s, abs=220.0 * 0.1)
    assert result.baseline_power_w == pytest.approx(220.0, abs=220.0 * 0.1 / 0.3)
    assert result.energy_j is not None and result.baseline_power_w is not None
    assert result.energy_adjusted_j == pytest.approx(
        result.energy_j - result.baseline_power_w * result.window_s
    )
    assert result.energy_adjusted_per_output_token_j is not None
    assert result.timeseries_path is not None
    table = pq.read_table(tmp_path / result.timeseries_path)
    assert [(f.name, str(f.type)) for f in table.schema][:8] == [
        (name, "double" if kind == "float64" else "float" if kind == "float32" else kind)
        for name, kind in TIMESERIES_COLUMNS
    ][:8]
    rows = table.to_pylist()
    seconds = sorted({r["timestamp_s"] for r in rows})
    assert seconds == [0.0, 1.0, 2.0]
    assert len(rows) == len(seconds)  # one row per second for the one device in use
    assert all(r["temperature_c"] is None and r["sm_utilisation_pct"] is None for r in rows)
    assert all(r["power_w"] == pytest.approx(220.0) for r in rows)
    assert result.thermal_throttle is not None and result.thermal_throttle.max_temperature_c is None
    assert result.warmup is not None and result.warmup.thermal_floor_skipped_reason == "disabled"
    assert (
        other.status == "passed"
        and other.timeseries_path is not None
        and {r["gpu_index"] for r in pq.read_table(tmp_path / other.timeseries_path).to_pylist()} == {1}
    )


def test_averaged_power_on_a_board_without_counter_is_biased_and_the_warning_says_why() -> None:
    """The issue's case: 1 s averaged power, a step inside a 3 s window. The figure lags the
    truth (the last second's rise is averaged away), so it must never come without a warning."""
    power = Steps([(0.0, 100.0), (2.0, 400.0)])
    gpu = SimulatedGpu(power_w=power, energy_counter=False, power_average_s=1.0)
    with simulated_gpus([gpu]) as sim:
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0,)))
        reading = _window(sim, meter, 3.0)
    truth = sim.nvml.true_energy_j(0, 0.0, 3.0)
    # 1 s averaging hides part of the step
    assert reading.energy_j is not None and reading.energy_j < 0.9 * truth
    assert [w.flag for w in reading.warnings] == ["power_integration"]
    assert "1 s average" in reading.warnings[0].message and "30 s" in reading.warnings[0].remedy
