"""The GPU path against the simulated NVML (pytest_llem.testing)."""

import time

import pyarrow.parquet as pq
import pytest

from pytest_llem import ExperimentSession, build_config
from pytest_llem.config import EnergyConfig
from pytest_llem.energy import DeviceSet, select_meter
from pytest_llem.energy import nvml as nvml_meter
from pytest_llem.errors import MeterUnavailable
from pytest_llem.sampler import TIMESERIES_COLUMNS
from pytest_llem.testing import Function, SimulatedGpu, SimulatedWorkload, Steps, simulated_gpus


def _window_energy(sim, meter, seconds):
    meter.start()
    time.sleep(seconds)
    reading = meter.stop()
    return reading


def _true_energy(sim, index):
    """The trace integral between the first and last counter reads of the window."""
    reads = sim.nvml.energy_reads[index]
    return sim.nvml.true_energy_j(index, reads[0][0], reads[-1][0])


def test_counter_energy_equals_trace_integral_per_device_and_total():
    gpus = [
        SimulatedGpu(power_w=Steps([(0.0, 120.0), (0.6, 310.0), (1.1, 180.0)])),
        SimulatedGpu(power_w=Function(lambda t: 200.0 + 50.0 * (t % 1.0))),
    ]
    with simulated_gpus(gpus) as sim:
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0, 1)))
        for reads in sim.nvml.energy_reads.values():
            reads.clear()
        reading = _window_energy(sim, meter, 1.5)
        meter.close()
    # the counter updates every 100 ms, like the real one: compare with the trace integral
    # between the counter's own update instants
    for index, label in enumerate(("gpu0", "gpu1")):
        reads = sim.nvml.energy_reads[index]
        t0, t1 = (int(t / 0.1) * 0.1 for t in (reads[0][0], reads[-1][0]))
        expected = sim.nvml.true_energy_j(index, t0, t1)
        assert reading.info.per_device_j[label] == pytest.approx(expected, rel=0.01)
    assert reading.energy_j == pytest.approx(sum(reading.info.per_device_j.values()))
    assert reading.info.measured is True and reading.info.source == "nvml"
    assert reading.info.method == "counter delta"


def test_boards_without_counter_integrate_polled_power():
    gpu = SimulatedGpu(power_w=Steps([(0.0, 100.0), (0.5, 300.0)]), energy_counter=False)
    with simulated_gpus([gpu]) as sim:
        meter = nvml_meter.create(EnergyConfig(sample_hz=50), DeviceSet((0,)))
        start = sim.nvml.clock()
        reading = _window_energy(sim, meter, 1.2)
        end = sim.nvml.clock()
    expected = sim.nvml.true_energy_j(0, start, end)
    assert reading.energy_j == pytest.approx(expected, rel=0.02)
    assert reading.info.method == "power integration"
    assert reading.warnings == []


def test_counter_reset_mid_window_warns_and_falls_back_to_power_integration():
    with simulated_gpus([SimulatedGpu(power_w=250.0, counter_period_s=0.0)]) as sim:
        sim.nvml.gpus[0].counter_reset_at_s = sim.nvml.clock() + 0.5
        meter = nvml_meter.create(EnergyConfig(sample_hz=50), DeviceSet((0,)))
        start = sim.nvml.clock()
        reading = _window_energy(sim, meter, 1.0)
        end = sim.nvml.clock()
    assert [w.flag for w in reading.warnings] == ["energy_counter_reset"]
    assert reading.energy_j == pytest.approx(250.0 * (end - start), rel=0.02)
    assert reading.info.method == "power integration"


def test_a_device_lost_mid_window_falls_back_with_its_own_warning():
    gpu = SimulatedGpu(power_w=200.0, counter_period_s=0.0)
    with simulated_gpus([gpu]) as sim:
        gpu.lost_at_s = sim.nvml.clock() + 0.6
        meter = nvml_meter.create(EnergyConfig(sample_hz=50), DeviceSet((0,)))
        start = sim.nvml.clock()
        reading = _window_energy(sim, meter, 1.0)
        end = sim.nvml.clock()
    assert [w.flag for w in reading.warnings] == ["energy_counter_unreadable"]
    # power was constant: the last sample held to the end of the window gives the energy
    assert reading.energy_j == pytest.approx(200.0 * (end - start), rel=0.02)


def test_query_errors_mid_run_are_survived():
    gpu = SimulatedGpu(power_w=200.0, energy_counter=False)
    with simulated_gpus([gpu]) as sim:
        now = sim.nvml.clock()
        gpu.query_errors = {"power": (now + 0.2, now + 0.5)}
        meter = nvml_meter.create(EnergyConfig(sample_hz=50), DeviceSet((0,)))
        start = sim.nvml.clock()
        reading = _window_energy(sim, meter, 1.0)
        end = sim.nvml.clock()
    # constant power: the gap is bridged by the neighbouring samples
    assert reading.energy_j == pytest.approx(200.0 * (end - start), rel=0.02)


def test_only_gpus_in_use_are_measured_with_cuda_visible_devices(monkeypatch):
    gpus = [SimulatedGpu(power_w=100.0), SimulatedGpu(power_w=200.0), SimulatedGpu(power_w=300.0)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    with simulated_gpus(gpus):
        meter = nvml_meter.create(EnergyConfig(), DeviceSet((0,)))  # cuda:0 is physical GPU 2
        reading = _window_energy(None, meter, 0.5)
    assert list(reading.info.per_device_j) == ["gpu0"]
    assert reading.energy_j / 0.5 == pytest.approx(300.0, rel=0.3)


def test_missing_device_and_missing_library_are_unavailable_with_a_fix(monkeypatch):
    with simulated_gpus([SimulatedGpu()]), pytest.raises(MeterUnavailable, match=r"CUDA device\(s\) \[1\]"):
        nvml_meter.create(EnergyConfig(), DeviceSet((1,)))
    with (
        simulated_gpus([SimulatedGpu(power_w=None, energy_counter=False)]),
        pytest.raises(MeterUnavailable, match="NOT_SUPPORTED for both energy and power"),
    ):
        nvml_meter.create(EnergyConfig(), DeviceSet((0,)))
    with pytest.raises(MeterUnavailable, match="runs on no GPU"):
        nvml_meter.create(EnergyConfig(), DeviceSet(()))


def test_auto_prefers_nvml_on_gpu_runs_without_zeus():
    with simulated_gpus([SimulatedGpu()]):
        meter, warnings = select_meter(EnergyConfig(meter="auto"), DeviceSet((0,)))
    assert meter.name == "nvml"
    assert warnings == []


SIM = {
    "engine": "simulated",
    "model": "sim",
    "device": "cuda:0",
    "n_prompts": 2,
    "max_new_tokens": 100,
    "repeats": 1,
    "warmup": {"n_warmup": 1, "thermal_floor_s": 0},
    "energy": {"meter": "nvml", "baseline_s": 0.3},
}


def test_not_supported_temperature_and_utilisation_give_nulls_and_a_complete_result(tmp_path):
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
    assert result.energy_j == pytest.approx(220.0 * result.window_s, rel=0.05)
    assert result.baseline_power_w == pytest.approx(220.0, rel=0.05)
    assert result.energy_adjusted_j == pytest.approx(
        result.energy_j - result.baseline_power_w * result.window_s
    )
    assert result.energy_adjusted_per_output_token_j is not None
    table = pq.read_table(tmp_path / result.timeseries_path)
    assert [(f.name, str(f.type)) for f in table.schema] == [
        (name, "double" if kind == "float64" else "float" if kind == "float32" else kind)
        for name, kind in TIMESERIES_COLUMNS
    ]
    rows = table.to_pylist()
    seconds = sorted({r["timestamp_s"] for r in rows})
    assert seconds == [float(s) for s in range(len(seconds))] and len(seconds) >= 2
    assert len(rows) == len(seconds)  # one row per second for the one device in use
    assert all(r["temperature_c"] is None and r["sm_utilisation_pct"] is None for r in rows)
    assert all(r["power_w"] == pytest.approx(220.0) for r in rows)
    assert result.thermal_throttle is not None and result.thermal_throttle.max_temperature_c is None
    assert result.warmup is not None and result.warmup.thermal_floor_skipped_reason == "disabled"
    assert other.status == "passed" and {
        r["gpu_index"] for r in pq.read_table(tmp_path / other.timeseries_path).to_pylist()
    } == {1}
