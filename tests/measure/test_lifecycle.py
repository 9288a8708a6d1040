"""Experiment lifecycle on simulated GPUs: order of calls, warmup, thermal floor, baseline, warnings.

Everything runs on the simulation's clock, advanced by the simulated engine: no test here
depends on sleeps or thread scheduling (the one wall-clock test checks only that threads end).
"""

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from factories import known, simulated_clock, simulated_settings

from pytest_llem import ExperimentSession, build_config
from pytest_llem.energy.estimate import EstimateMeter
from pytest_llem.hardware import clock as clocks
from pytest_llem.hardware.clock import WALL_CLOCK, SimulatedClock
from pytest_llem.hardware.sampler import Sample, bucket_per_second, throttle_summary
from pytest_llem.measure.baseline import BaselineCache, measure_baseline
from pytest_llem.measure.calibration import CPU_MIN_WINDOW_S
from pytest_llem.measure.validity import UPDATE_PERIOD_S
from pytest_llem.measure.warmup import run_warmup, thermal_floor
from pytest_llem.schema import quality
from pytest_llem.schema.config import WarmupConfig
from pytest_llem.schema.errors import MeasurementError
from pytest_llem.schema.results import ExperimentResult, WarmupResult
from pytest_llem.testing import Function, SimulatedGpu, SimulatedWorkload, Simulation, Steps, simulated_gpus

SIM = simulated_settings(
    max_new_tokens=20,
    # one pass per window, and its energy kept however short: these tests count calls, tokens
    # and joules (validity has its own tests in test_validity.py)
    energy={"meter": "nvml", "baseline_s": 0.2, "min_valid_window_s": 0},
    min_window_s=0,
)


def _run(
    settings: dict[str, Any] | None = None,
    gpus: list[SimulatedGpu] | None = None,
    workload: SimulatedWorkload | None = None,
) -> tuple[Simulation, ExperimentResult]:
    with simulated_gpus(gpus or [SimulatedGpu()], workload) as sim:
        result = ExperimentSession().run(build_config(("test", {**SIM, **(settings or {})})), "t::x")
    return sim, result


def test_device_is_synchronised_before_every_meter_stop() -> None:
    sim, result = _run()
    assert result.status == "passed", result.error
    events = [(kind, detail) for kind, _, detail in sim.events("synchronize", "generate", "nvml.energy")]
    # meter stop = the first energy read after the last generate of a window (the reads
    # between two generate calls of one window are the phase recorder's, after the call returned)
    generate_positions = [i for i, (kind, _) in enumerate(events) if kind == "generate"]
    checked = 0
    for position in generate_positions:
        following = events[position + 1 :]
        until = next(i for i, (kind, _) in enumerate(following) if kind in ("synchronize", "generate"))
        if following[until][0] == "generate":
            continue
        assert "nvml.energy" not in [kind for kind, _ in following[:until]], (
            f"meter read before sync after generate #{position}: {following[:3]}"
        )
        checked += 1
    assert checked >= SIM["repeats"]


def test_context_exists_before_the_baseline_and_the_baseline_before_the_model() -> None:
    sim, _ = _run()
    kinds = [kind for kind, _, _ in sim.events("init_device", "nvml.energy", "generate")]
    context, first_generate = kinds.index("init_device"), kinds.index("generate")
    assert "generate" not in kinds[:context]
    assert "nvml.energy" in kinds[context:first_generate]  # the idle baseline window


def test_windows_hold_the_passes_that_make_them_last_min_window_s() -> None:
    """One pass = 2 prompts x 20 tokens x 10 ms = 0.4 s: 3 passes make a window of >= 1 s;
    every per-token figure divides by the tokens of the whole window."""
    workload = SimulatedWorkload(seconds_per_token=0.01, prefill_seconds_per_token=0.0)
    _, one = _run({"min_window_s": 0}, workload=workload)
    _, calibrated = _run({"min_window_s": 1.0}, workload=workload)
    assert (one.window_passes, calibrated.window_passes) == (1, 3)
    # the result's count is one pass, what a user asserts; the window's own count is the total
    assert calibrated.output_tokens == one.output_tokens == calibrated.requested_output_tokens == 2 * 20
    assert calibrated.window_output_tokens == 3 * one.window_output_tokens == 3 * 2 * 20
    assert [r.output_tokens for r in calibrated.repeats] == [3 * 2 * 20] * len(calibrated.repeats)
    assert "output_tokens_mismatch" not in _flags(calibrated)
    assert all(r.window_s >= 1.0 for r in calibrated.repeats)
    assert calibrated.tokens_per_second == pytest.approx(one.tokens_per_second)
    # the energy counter moves in 100 ms steps: a window's reading can be off by one step's
    # energy, a quarter of a 0.4 s window and a tenth of a 1.2 s one, so the calibrated window's
    # J/token is bound three times closer to the board's true figure (where within its bound it
    # falls depends on the counter's phase at the window's ends)
    gpu = SimulatedGpu()
    power_w = gpu.power_w
    assert isinstance(power_w, float)  # the default board draws constant power
    true_j_per_token = power_w / calibrated.tokens_per_second
    for window in (one, calibrated):
        assert window.energy_per_output_token_j is not None
        step_bound = gpu.counter_period_s * power_w / window.window_output_tokens
        assert abs(window.energy_per_output_token_j - true_j_per_token) <= step_bound + 1e-9
    assert gpu.counter_period_s * power_w / calibrated.window_output_tokens <= 0.1 * true_j_per_token


def test_the_default_window_is_5_s_on_a_gpu_and_1_s_on_cpu() -> None:
    workload = SimulatedWorkload(seconds_per_token=0.01, prefill_seconds_per_token=0.0)
    _, gpu = _run({"min_window_s": None}, workload=workload)
    assert gpu.window_passes == 13 and all(r.window_s >= 5.0 for r in gpu.repeats)  # ceil(5 / 0.4)
    with simulated_gpus([SimulatedGpu()], workload):
        cpu = ExperimentSession().run(
            build_config(("test", {**SIM, "device": "cpu", "min_window_s": None, "energy": "estimate"})),
            "t::cpu",
        )
    assert cpu.status == "passed", cpu.error
    assert cpu.window_passes >= 1 and all(r.window_s >= 1.0 for r in cpu.repeats)


def test_a_workload_the_clock_cannot_time_keeps_one_pass_and_says_its_window_is_short() -> None:
    with simulated_gpus([SimulatedGpu()]):  # a no-op never moves the simulated clock
        result = ExperimentSession().measure_calls(
            build_config(("test", {**SIM, "min_window_s": 1.0})), "t::noop", lambda: None, output_tokens=4
        )
    assert result.window_passes == 1 and result.output_tokens == 4
    assert "short_window" in {w.flag for w in result.warnings}


def test_warmup_tokens_never_enter_the_metrics() -> None:
    _, cold = _run({"warmup": {"n_warmup": 0, "thermal_floor_s": 0}})
    _, warm = _run({"warmup": {"n_warmup": 3, "thermal_floor_s": 0}})
    assert cold.output_tokens == warm.output_tokens == 2 * 20
    assert warm.warmup is not None and warm.warmup.iterations == 3 and len(warm.warmup.latencies_s) == 3
    assert warm.flops is not None and cold.flops is not None
    assert warm.flops.tokens_processed == cold.flops.tokens_processed


def test_repeats_give_mean_std_cv_and_interval() -> None:
    # a counter that moves continuously: 80 ms windows would read 0 J from a 100 ms one
    # (validity's power floor calls such a window invalid and drops its energy)
    _, result = _run({"repeats": 4}, gpus=[SimulatedGpu(counter_period_s=0.0)])
    assert len(result.repeats) == 4
    for metric in ("energy_per_output_token_j", "tokens_per_second"):
        stats = result.stats[metric]
        assert stats.n == 4 and stats.std >= 0
        assert stats.ci95_low is not None and stats.ci95_high is not None
        assert stats.ci95_low <= stats.mean <= stats.ci95_high
    total_energy = sum(known(r.energy_j for r in result.repeats))
    assert result.energy_per_output_token_j == pytest.approx(total_energy / (4 * result.output_tokens))


def test_convergence_warmup_stops_when_latency_settles() -> None:
    latencies = iter([0.5, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    result = run_warmup(WarmupConfig(convergence=True, min_prompts=5, cv_window=5), lambda i: next(latencies))
    assert result.mode == "convergence" and result.converged
    assert result.final_cv is not None
    assert result.iterations == 8 and result.final_cv < 0.05 and result.target_cv == 0.05


def test_convergence_warmup_gives_up_at_max_prompts() -> None:
    result = run_warmup(
        WarmupConfig(convergence=True, min_prompts=5, max_prompts=7), lambda i: 0.1 if i % 2 else 0.3
    )
    assert result.iterations == 7 and not result.converged and result.max_prompts == 7


def test_thermal_floor_waits_on_gpus_and_is_skipped_where_no_temperature_is_readable() -> None:
    base = WarmupResult(
        mode="fixed",
        iterations=0,
        converged=True,
        final_cv=None,
        target_cv=None,
        max_prompts=None,
        latencies_s=[],
        thermal_floor_s=0.0,
        thermal_floor_waited_s=0.0,
    )
    clock, announced = SimulatedClock(), list[float]()
    waited = thermal_floor(base, None, True, lambda: 60.0, clock=clock, announce=announced.append)
    assert announced == [60.0] and clock.now() == 60.0
    assert waited.thermal_floor_s == 60.0 and waited.thermal_floor_skipped_reason is None
    assert waited.thermal_floor_waited_s == 60.0  # the wait on the clock that waited, not the wall
    skipped = thermal_floor(base, 45.0, True, lambda: None, clock=clock, announce=announced.append)
    assert skipped.thermal_floor_skipped_reason == "no temperature can be read" and clock.now() == 60.0
    cpu = thermal_floor(base, None, False, lambda: None, clock=clock, announce=announced.append)
    assert cpu.thermal_floor_skipped_reason is not None
    assert cpu.thermal_floor_skipped_reason.startswith("CPU run") and announced == [60.0]


def test_a_simulated_run_reports_the_simulated_thermal_floor_wait() -> None:
    _, result = _run({"warmup": {"n_warmup": 1, "thermal_floor_s": 45}})
    assert result.status == "passed", result.error
    assert result.warmup is not None
    assert result.warmup.thermal_floor_s == 45.0
    assert result.warmup.thermal_floor_waited_s == pytest.approx(45.0, abs=1e-9)


def test_baseline_is_cached_with_a_ttl_and_on_disk(tmp_path: Path) -> None:
    meter = EstimateMeter(10.0)
    cache = BaselineCache(ttl_s=60.0, disk_path=tmp_path / "baseline.json")
    key = BaselineCache.key("estimate", "cpu", "{}")
    assert cache.get(key) is None
    with clocks.installed(SimulatedClock()):  # the 30 s wait takes no real time
        cache.put(key, measure_baseline(meter, 30.0))
    assert BaselineCache(ttl_s=60.0, disk_path=tmp_path / "baseline.json").get(key) is not None
    assert BaselineCache(ttl_s=1e-9, disk_path=tmp_path / "baseline.json").get(key) is None


def test_a_baseline_cache_file_takes_the_umask_and_a_directory_in_its_place_leaves_no_litter(
    tmp_path: Path,
) -> None:
    meter = EstimateMeter(10.0)
    key = BaselineCache.key("estimate", "cpu", "{}")
    with clocks.installed(SimulatedClock()):
        baseline = measure_baseline(meter, 1.0)
    previous = os.umask(0o022)
    try:
        BaselineCache(ttl_s=60.0, disk_path=tmp_path / "baseline.json").put(key, baseline)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "baseline.json").stat().st_mode) == 0o644  # not mkstemp's 0600
    # a cache path that is a directory: skipped with a warning, the baseline kept in memory,
    # and nothing left beside it
    holder = tmp_path / "holder"
    (holder / "cache").mkdir(parents=True)
    cache = BaselineCache(ttl_s=60.0, disk_path=holder / "cache")
    with pytest.warns(RuntimeWarning):
        cache.put(key, baseline)
    assert cache.get(key) is not None
    assert sorted(p.name for p in holder.iterdir()) == ["cache"]
    assert list((holder / "cache").iterdir()) == []


def test_bucketing_gives_one_row_per_second_per_device_with_or_of_throttle_masks() -> None:
    samples = [
        Sample(t, gpu, 100.0 + gpu, 50.0, 1.0, 2.0, None, 0x20 if (t == 0.5 and gpu == 1) else 0)
        for t in (0.0, 0.5, 1.0, 1.5, 2.2)
        for gpu in (0, 1)
    ]
    rows = bucket_per_second(samples, origin_s=0.0)
    assert [(r["timestamp_s"], r["gpu_index"]) for r in rows] == [
        (0.0, 0),
        (0.0, 1),
        (1.0, 0),
        (1.0, 1),
        (2.0, 0),
        (2.0, 1),
    ]
    assert rows[1]["throttle_reasons"] == 0x20 and rows[0]["throttle_reasons"] == 0
    assert rows[0]["sm_utilisation_pct"] is None
    summary = throttle_summary(samples, 0.5)
    assert summary.detected and summary.kinds == ["sw_thermal_slowdown"]


def _flags(result: ExperimentResult) -> set[str]:
    return set(result.warning_flags)


def test_every_measurement_warning_flag_is_produced() -> None:
    seen = set()
    # short window, persistence off, thermal drift, throttling, low sample count
    _, hot = _run(
        {"energy": {"meter": "nvml", "baseline_s": 0.2, "sample_hz": 5}},
        gpus=[
            SimulatedGpu(
                persistence_mode=False,
                temperature_c=Function(lambda t: 40.0 + 40.0 * t),
                throttle_mask=Steps([(0.0, 0x40)]),
            )
        ],
        workload=SimulatedWorkload(seconds_per_token=0.01),
    )
    assert {
        "short_window",
        "persistence_mode_off",
        "thermal_drift",
        "throttling",
        "low_sample_count",
    } <= _flags(hot)
    throttle = next(w for w in hot.warnings if w.flag == "throttling")
    assert throttle.remedy and throttle.threshold == 0.0
    seen |= _flags(hot)
    # estimated energy
    _, estimated = _run({"device": "cpu", "energy": {"meter": "estimate", "baseline_s": 0}})
    assert "energy_estimated" in _flags(estimated)
    seen |= _flags(estimated)
    # token count differs from the request (early EOS with fixed_length off)
    _, short = _run({"fixed_length": False}, workload=SimulatedWorkload(tokens_before_eos=5))
    assert "output_tokens_mismatch" in _flags(short) and short.output_tokens == 2 * 5
    seen |= _flags(short)
    # negative adjusted energy: the idle baseline was taken while power was high
    _, negative = _run(gpus=[SimulatedGpu(power_w=Function(lambda t: 400.0 if t < 0.3 else 100.0))])
    assert "negative_adjusted_energy" in _flags(negative)
    assert negative.energy_adjusted_j is not None
    assert negative.energy_adjusted_j < 0  # never clamped
    seen |= _flags(negative)
    # high CV across repeats
    calls = iter(range(1000))
    noisy_workload = SimulatedWorkload(seconds_per_token=0.001)
    original = noisy_workload.seconds_per_token

    class Noisy(SimulatedWorkload):
        @property
        def seconds_per_token(self) -> float:  # alternate fast and slow repeats
            return original * (1 if next(calls) % 4 < 2 else 4)

        @seconds_per_token.setter
        def seconds_per_token(self, value: float) -> None:
            pass

    _, varied = _run({"repeats": 4, "warmup": {"n_warmup": 0, "thermal_floor_s": 0}}, workload=Noisy())
    assert "high_cv" in _flags(varied)
    seen |= _flags(varied)
    # counter reset
    with simulated_gpus(
        [SimulatedGpu(counter_period_s=0.0)], SimulatedWorkload(seconds_per_token=0.01)
    ) as sim:
        sim.nvml.gpus[0].counter_reset_at_s = sim.clock.now() + 0.6
        reset = ExperimentSession().run(build_config(("test", {**SIM, "repeats": 1})), "t::reset")
    assert "energy_counter_reset" in _flags(reset)
    seen |= _flags(reset)
    assert seen >= {
        "short_window",
        "persistence_mode_off",
        "thermal_drift",
        "low_sample_count",
        "energy_estimated",
        "output_tokens_mismatch",
        "negative_adjusted_energy",
        "throttling",
        "high_cv",
        "energy_counter_reset",
    }


def test_a_reference_model_runs_in_the_adjacent_window_of_every_repeat() -> None:
    sim, result = _run(
        {"reference_model": "pinned-reference", "repeats": 4}, gpus=[SimulatedGpu(counter_period_s=0.0)]
    )
    assert result.status == "passed", result.error
    for repeat in result.repeats:
        assert repeat.reference_window_s is not None and repeat.reference_energy_j is not None
        assert repeat.relative_time == pytest.approx(repeat.window_s / repeat.reference_window_s)
        assert repeat.relative_time == pytest.approx(1.0, rel=0.2)  # same simulated workload
    # target and reference windows alternate which goes first
    generates = len(sim.events("generate"))
    assert generates == 1 + 1 + 4 * 2 * 2  # one warmup call each, then 4 repeats x 2 models x 2 batches


def test_the_idle_baseline_follows_the_simulated_clock_exactly() -> None:
    """30 s of idle at a 3-level power trace that repeats every 30 s (so any 30 s of it has the
    same mean, wherever the baseline starts after the meter's creation): no real wait, and the
    exact mean power."""
    power = Steps([(0.0, 60.0), (10.0, 90.0), (20.0, 75.0), (30.0, 60.0), (40.0, 90.0)])
    with simulated_gpus([SimulatedGpu(power_w=power, counter_period_s=0.0)]) as sim:
        result = ExperimentSession().run(
            build_config(("test", {**SIM, "energy": {"meter": "nvml", "baseline_s": 30}})), "t::baseline"
        )
    assert result.status == "passed", result.error
    assert result.baseline_power_w == pytest.approx(75.0)
    assert sim.clock.now() > 30.0


def test_the_call_order_is_the_same_on_every_run() -> None:
    """No thread timing: the simulated engine drives every poll, so two runs log alike."""
    first, _ = _run()
    second, _ = _run()
    assert [(kind, round(t, 9)) for kind, t, _ in first.log] == [
        (kind, round(t, 9)) for kind, t, _ in second.log
    ]


def test_a_gpu_lost_inside_a_window_fails_the_experiment_with_a_measurement_error() -> None:
    workload = SimulatedWorkload(seconds_per_token=0.01)
    with simulated_gpus([SimulatedGpu(lost_at_s=0.5)], workload):
        result = ExperimentSession().run(
            build_config(("test", {**SIM, "energy": {"meter": "nvml", "baseline_s": 0}})), "t::lost"
        )
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("MeasurementError: gpu0 is lost")
    assert "not available" not in result.error


@pytest.mark.parametrize("meter", ["nvml", "zeus", "none"])
def test_every_poller_thread_stops_when_the_measured_block_raises(meter: str) -> None:
    """On the wall clock the pollers are real threads: an exception inside the window must
    still stop (join) every one of them."""
    if meter == "zeus":
        pytest.importorskip("zeus.monitor")
    config = build_config(("test", {**SIM, "energy": {"meter": meter, "baseline_s": 0}}))
    with simulated_gpus([SimulatedGpu()], clock=WALL_CLOCK):
        session = ExperimentSession()
        with (
            pytest.raises(RuntimeError, match="inference crashed"),
            session.measure(config, "t::crash", output_tokens=10),
        ):
            assert [t.name for t in threading.enumerate() if t.name.startswith("llem-")]
            raise RuntimeError("inference crashed")
        session.close()
    assert [t.name for t in threading.enumerate() if t.name.startswith("llem-")] == []


def test_a_poller_failure_inside_a_window_is_a_measurement_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llem.hardware import sampler

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("NVML socket closed")

    config = build_config(("test", {**SIM, "energy": {"meter": "none", "baseline_s": 0}}))
    with simulated_gpus([SimulatedGpu()]) as sim:
        session = ExperimentSession()
        monkeypatch.setattr(sampler, "read_sample", broken)
        with (
            pytest.raises(MeasurementError, match="could not close its window: OSError: NVML socket closed"),
            session.measure(config, "t::broken", output_tokens=10),
        ):
            simulated_clock(sim.clock).advance(1.0)


def test_a_gpu_lost_before_the_run_is_one_pre_flight_error() -> None:
    settings = {**SIM, "energy": {"meter": "none", "baseline_s": 0}}
    with simulated_gpus([SimulatedGpu(lost_at_s=0.0)]):
        result = ExperimentSession().run(build_config(("test", settings)), "t::lost-early")
    assert result.status == "error"
    assert result.error is not None
    assert result.error.startswith("pre-flight failed (1 problem(s)): gpu0 is lost (NVML_ERROR_GPU_IS_LOST")


def test_closing_a_session_after_its_simulation_ended_warns_instead_of_raising() -> None:
    """A model of the simulated engine outlives its simulation (a session fixture closed
    first): closing the session releases what it can and warns about the rest."""
    config = build_config(("test", {**SIM, "energy": {"meter": "none", "baseline_s": 0}}))
    session = ExperimentSession()
    with simulated_gpus([SimulatedGpu()]):
        assert session.run(config, "t::sim").status == "passed"
    with pytest.warns(RuntimeWarning, match="releasing the simulated model"):
        session.close()


# -- one lifecycle, three workloads: run(), measure(fn) and `with measure()` ------------------
def _stage_log(session: ExperimentSession) -> list[str]:
    stages: list[str] = []

    class Recorder:
        def update(
            self,
            stage: str,
            step: int | None = None,
            total: int | None = None,
            countdown_s: float | None = None,
        ) -> None:
            stages.append(stage if step is None else f"{stage} {step}/{total}")

    session.progress = Recorder()
    return stages


def test_measure_fn_takes_the_same_warmup_thermal_floor_and_windows_as_run() -> None:
    settings = {**SIM, "warmup": {"n_warmup": 2, "thermal_floor_s": 30}, "repeats": 3}
    config = build_config(("test", settings))
    with simulated_gpus([SimulatedGpu()]) as sim:
        session = ExperimentSession()
        run_stages = _stage_log(session)
        run = session.run(config, "t::run")
        calls = []

        def own_code() -> None:
            calls.append(sim.clock.now())
            simulated_clock(sim.clock).advance(0.5)  # the caller's inference takes simulated time

        fn_stages = _stage_log(session)
        measured = session.measure_calls(config, "t::fn", own_code, output_tokens=10)
    assert run.status == measured.status == "passed"
    # the same stages in the same order (pre-flight and loading are run()'s own, and cached)
    expected = ["warmup 1/2", "warmup 2/2", "thermal floor", "repeat 1/3", "repeat 2/3", "repeat 3/3"]

    def lifecycle_stages(
        stages: list[str],
    ) -> list[str]:  # pre-flight, baseline and loading are cached per session
        return [s for s in stages if not s.startswith(("pre-flight", "idle baseline", "loading"))]

    assert lifecycle_stages(run_stages) == lifecycle_stages(fn_stages) == expected
    assert len(calls) == 2 + 3  # warmup steps, then one call per window
    assert measured.warmup is not None and run.warmup is not None
    assert measured.warmup.thermal_floor_s == run.warmup.thermal_floor_s == 30.0
    assert len(measured.repeats) == 3 and measured.engine == "llem.measure"


def test_the_block_form_is_one_window_without_warmup_and_closes_it_when_the_block_raises() -> None:
    config = build_config(("test", {**SIM, "warmup": {"n_warmup": 3, "thermal_floor_s": 30}}))
    with simulated_gpus([SimulatedGpu()]) as sim:
        session = ExperimentSession()
        stages = _stage_log(session)
        with session.measure(config, "t::block", output_tokens=8) as handle:
            simulated_clock(sim.clock).advance(2.0)
        assert handle.result is not None and handle.result.status == "passed"
        assert handle.result.warmup is None and len(handle.result.repeats) == 1
        assert handle.result.repeats[0].window_s == pytest.approx(2.0, abs=0.2)
        assert not any(s.startswith(("warmup", "thermal floor", "repeat")) for s in stages)
        with (
            pytest.raises(RuntimeError, match="the caller's code failed"),
            session.measure(config, "t::broken", output_tokens=8),
        ):
            raise RuntimeError("the caller's code failed")
    pollers = [t for t in threading.enumerate() if "poll" in t.name.lower()]
    assert pollers == []  # the window's poller stopped on the error path


def test_no_short_window_warning_at_the_default_windows_where_the_counter_resolves_them() -> None:
    """The default GPU window (5 s) holds 50 updates of NVML's 100 ms counter, and the default
    CPU window (1 s) 100 of the estimate's 10 ms ticks: raising either would change nothing
    the warning is about, so it stays silent; a window of a few counter steps still warns."""
    fast = SimulatedWorkload(seconds_per_token=0.01)
    _, gpu = _run({"min_window_s": None, "energy": {"meter": "nvml", "baseline_s": 0}}, workload=fast)
    assert gpu.window_s >= 5.0 and "short_window" not in _flags(gpu)
    _, short = _run({"min_window_s": 0, "energy": {"meter": "nvml", "baseline_s": 0}}, workload=fast)
    warning = next(w for w in short.warnings if w.flag == "short_window")
    assert warning.threshold == pytest.approx(5.0) and "raise min_window_s to at least 5 s" in warning.remedy
    # the default CPU window (1 s) against the estimate meter's 10 ms ticks: 100 of them
    assert quality.short_window(CPU_MIN_WINDOW_S, "estimate", UPDATE_PERIOD_S["estimate"]) is None
    assert quality.short_window(0.4, "estimate", UPDATE_PERIOD_S["estimate"]) is not None
    assert quality.short_window(0.1, "none", None) is None  # nothing metered: nothing to warn about


def _generate_calls(sim: Simulation) -> int:
    return len(list(sim.events("generate")))


@pytest.mark.parametrize(
    ("pass_s", "n_warmup", "passes", "basis"),
    [
        # one pass (2 prompts x 20 tokens, in one batch) far beyond the minimum: the warmup's
        # steps say so, cold or warm, and no pass is run only to learn it
        (4.0, 1, 1, "warmup: the first (cold) step"),
        (4.0, 3, 1, "warmup: median of 2 warm step(s)"),
        # a shorter pass: the count matters, so passes are timed apart, warm steps or not
        (0.45, 3, 3, "timed 1 pass(es)"),  # ceil(1 s / 0.45 s)
        (1.5, 3, 1, "timed 1 pass(es)"),  # one pass fills the window, but not by the 2x margin
        (0.35, 1, 3, "timed 1 pass(es)"),
        (0.35, 0, 3, "timed 1 pass(es)"),
    ],
)
def test_windows_are_calibrated_from_the_warmup_where_it_decides_the_count(
    pass_s: float, n_warmup: int, passes: int, basis: str
) -> None:
    workload = SimulatedWorkload(seconds_per_token=pass_s / 20, prefill_seconds_per_token=0.0)
    settings = {
        "min_window_s": 1.0,
        "repeats": 2,
        "batch_size": 2,
        "warmup": {"n_warmup": n_warmup, "thermal_floor_s": 0},
    }
    sim, result = _run(settings, workload=workload)
    assert result.status == "passed", result.error
    assert result.window_calibration is not None
    assert result.window_passes == passes and result.window_calibration.startswith(basis)
    assert all(r.window_s >= 1.0 for r in result.repeats)  # calibration's one promise
    timed = 0 if basis.startswith("warmup") else 1  # the passes timed apart, if any
    assert _generate_calls(sim) == n_warmup + timed + 2 * passes


ONE_COLD_WARMUP_STEP = {
    "min_window_s": 1.0,
    "repeats": 2,
    "batch_size": 2,
    "warmup": {"n_warmup": 1, "thermal_floor_s": 0},
}


def test_a_cold_first_step_decides_only_provisionally_and_a_short_first_window_is_taken_again() -> None:
    """A fresh process's first call carries one-time costs (here 3 s before a 0.05 s pass): the
    cold step alone says one pass fills the window, the first window shows it does not, and it is
    measured again with the count it shows - kept windows all reach the minimum, and the short
    one is not among them. (A pass of 20 tokens at 1/256 s: 0.078125 s, exact in binary.)"""
    workload = SimulatedWorkload(seconds_per_token=1 / 256, prefill_seconds_per_token=0.0, cold_start_s=3.0)
    sim, result = _run(ONE_COLD_WARMUP_STEP, workload=workload)
    assert result.status == "passed", result.error
    assert result.window_passes == 13  # ceil(1 s / 0.078125 s)
    assert result.window_calibration is not None
    assert result.window_calibration.startswith("warmup: the first (cold) step")
    assert (
        "the first window held 1 pass(es) in 0.07812 s, under 1 s: taken again" in result.window_calibration
    )
    assert [r.index for r in result.repeats] == [0, 1]
    assert all(r.window_s >= 1.0 for r in result.repeats)
    assert _generate_calls(sim) == 1 + 1 + 2 * 13  # warmup, the short window, two kept windows


def test_a_cold_first_step_that_holds_keeps_its_count_without_a_second_look() -> None:
    workload = SimulatedWorkload(seconds_per_token=4.0 / 20, prefill_seconds_per_token=0.0, cold_start_s=3.0)
    sim, result = _run(ONE_COLD_WARMUP_STEP, workload=workload)
    assert result.window_calibration is not None
    assert result.window_passes == 1 and "taken again" not in result.window_calibration
    assert _generate_calls(sim) == 1 + 2
