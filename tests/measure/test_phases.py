"""Prefill/decode energy and vLLM's steady state: the recorder's reads at engine steps, exact
on a simulated GPU, and null with the reason wherever the meter cannot resolve a phase."""

from collections.abc import Sequence

import pyarrow as pa
import pytest
from factories import simulated_settings

from pytest_llem import ExperimentSession, build_config
from pytest_llem.engines.base import (
    EngineDefaults,
    GenerationProgress,
    LoadedModel,
    PreparedBatch,
    RequestOutput,
)
from pytest_llem.hardware.clock import SimulatedClock
from pytest_llem.measure.phases import (
    CallRecord,
    MeterFacts,
    PhaseRecorder,
    phase_energy,
    steady_spans,
    steady_state,
)
from pytest_llem.schema.results import ExperimentResult
from pytest_llem.store.report import experiment_row, experiments_schema
from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, simulated_gpus

WATTS = 200.0
PREFILL_S_PER_TOKEN, STEP_S = 0.05, 0.02
SIM = simulated_settings(batch_size=1, max_new_tokens=50, min_window_s=0)
NVML = MeterFacts("nvml", reads_mid_window=True, minimum_s=1.0, update_period_s=0.1)


def _run(
    counter_period_s: float = 0.0, prefill_s_per_token: float = PREFILL_S_PER_TOKEN, **settings: object
) -> ExperimentResult:
    workload = SimulatedWorkload(seconds_per_token=STEP_S, prefill_seconds_per_token=prefill_s_per_token)
    with simulated_gpus([SimulatedGpu(power_w=WATTS, counter_period_s=counter_period_s)], workload):
        return ExperimentSession().run(build_config(("t", {**SIM, **settings})), "t::phases")


def test_prefill_and_decode_energy_are_exact_on_a_simulated_gpu_at_batch_size_1() -> None:
    result = _run()
    assert result.status == "passed", result.error
    phases = result.phases
    assert phases is not None
    calls = SIM["n_prompts"] * SIM["repeats"]  # one request per call at batch size 1
    tokens = SIM["max_new_tokens"]
    assert phases.prefill_input_tokens == result.input_tokens * SIM["repeats"]
    # the simulated engine's first token exists after the prompt's prefill and one step
    assert phases.prefill_s == pytest.approx(
        PREFILL_S_PER_TOKEN * phases.prefill_input_tokens + STEP_S * calls
    )
    assert phases.decode_s == pytest.approx(STEP_S * (tokens - 1) * calls)
    assert phases.decode_output_tokens == (tokens - 1) * calls
    assert phases.prefill_energy_j is not None and phases.decode_energy_j is not None
    assert result.energy_j is not None
    # the board draws a constant 200 W and its counter is continuous: energy = 200 W x seconds
    assert phases.prefill_energy_j == pytest.approx(WATTS * phases.prefill_s, abs=0.01)
    assert phases.decode_energy_j == pytest.approx(WATTS * phases.decode_s, abs=0.01)
    assert phases.prefill_energy_per_input_token_j == pytest.approx(
        phases.prefill_energy_j / phases.prefill_input_tokens
    )
    assert phases.decode_energy_per_output_token_j == pytest.approx(WATTS * STEP_S, rel=1e-4)
    assert phases.prefill_null_reason is None and phases.decode_null_reason is None
    # the phases are inside the windows, and make up all of them here (no other work)
    assert phases.prefill_energy_j + phases.decode_energy_j == pytest.approx(result.energy_j * SIM["repeats"])
    assert result.steady_state is None  # the simulated engine takes static batches: no steady state
    # the report's Parquet row holds them flat, typed
    row = experiment_row(result, None)
    table = pa.Table.from_pylist([row], schema=experiments_schema())
    assert table.column("phase_decode_energy_j").to_pylist() == [phases.decode_energy_j]
    assert table.column("phase_prefill_input_tokens").to_pylist() == [phases.prefill_input_tokens]
    assert table.column("steady_state_energy_j").to_pylist() == [None]


def test_a_phase_shorter_than_the_counters_update_period_is_null_with_the_reason() -> None:
    # prefill spans of about 25 ms, 0.1 s in all: under the 1 s minimum of a 100 ms counter
    result = _run(counter_period_s=0.1, prefill_s_per_token=0.0005)
    phases = result.phases
    assert phases is not None and phases.prefill_energy_j is None
    assert phases.prefill_energy_per_input_token_j is None
    assert (
        phases.prefill_null_reason is not None
        and "under the nvml meter's 1 s minimum" in phases.prefill_null_reason
    )
    assert phases.prefill_s > 0  # the time is kept
    # decode spans last 0.98 s each, 3.9 s in all: resolved, with the counter's 100 ms steps
    assert phases.decode_energy_j == pytest.approx(WATTS * phases.decode_s, abs=WATTS * 0.1 * 4)
    assert phases.decode_null_reason is None


def test_an_invalid_experiment_stores_no_phase_energy_and_says_why() -> None:
    result = _run(counter_period_s=0.1, max_new_tokens=4)  # windows far under 1 s: invalid
    assert result.validity is not None and result.validity.status == "invalid"
    phases = result.phases
    assert phases is not None and phases.prefill_energy_j is None and phases.decode_energy_j is None
    assert (
        phases.prefill_null_reason == phases.decode_null_reason == "the experiment is invalid (see validity)"
    )


def _recorded(
    steps: Sequence[tuple[int, int, int]],
    requests: int,
    max_num_seqs: int,
    watts: float = 100.0,
    step_s: float = 0.5,
    read: bool = True,
) -> list[CallRecord]:
    """A vLLM-like call: each step is (first_tokens, finished, output_tokens) after it; the
    meter reads watts x elapsed time."""
    clock = SimulatedClock()
    recorder = PhaseRecorder((lambda: watts * clock.now()) if read else None, clock, max_num_seqs)
    recorder.begin_call()
    for k, (first, finished, tokens) in enumerate(steps, start=1):
        clock.advance(step_s)
        recorder(GenerationProgress(requests, first, finished, tokens, k * step_s))
    recorder.end_call(input_tokens=10 * requests)
    return recorder.calls


# 5 requests, max_num_seqs 2, 3 tokens each: two run, then as they finish the rest are admitted
VLLM_STEPS = [(2, 0, 2), (2, 0, 4), (3, 2, 7), (4, 2, 9), (4, 3, 11), (5, 4, 14), (5, 5, 15)]


def test_the_steady_state_runs_from_max_num_seqs_first_tokens_to_requests_minus_max_minus_one_finished() -> (
    None
):
    (call,) = _recorded(VLLM_STEPS, requests=5, max_num_seqs=2)
    assert call.steady_start is not None and call.steady_start.progress.first_tokens == 2
    assert call.steady_start.time_s == 0.5  # after the first step
    # 5 - 2 - 1 = 2 finished: after the third step
    assert call.steady_end is not None and call.steady_end.time_s == 1.5
    assert [s.output_tokens for s in steady_spans(call)] == [2, 3]
    record = steady_state([call], 2, MeterFacts("estimate", True, minimum_s=0.1, update_period_s=0.01))
    assert record.seconds == pytest.approx(1.0) and record.output_tokens == 5
    assert record.energy_j == pytest.approx(100.0) and record.average_power_w == pytest.approx(100.0)
    assert record.energy_per_output_token_j == pytest.approx(20.0) and record.tokens_per_second == 5.0
    assert record.null_reason is None


def test_no_steady_state_is_said_and_stored_as_null() -> None:
    few = steady_state(_recorded([(2, 0, 2), (3, 2, 5), (3, 3, 6)], 3, 2), 2, NVML)
    assert few.seconds is None and few.energy_j is None
    assert few.null_reason is not None and "3 requests for max_num_seqs=2" in few.null_reason
    # requests finish before the batch fills (one is admitted only after another ended)
    never = steady_state(
        _recorded([(1, 0, 1), (1, 1, 2), (2, 1, 3), (2, 2, 4), (3, 3, 5), (4, 4, 6)], 4, 2), 2, NVML
    )
    assert never.seconds is None and never.null_reason is not None and "never filled" in never.null_reason


def test_a_meter_that_reads_whole_windows_only_keeps_times_and_tokens_and_says_why() -> None:
    calls = _recorded(VLLM_STEPS, requests=5, max_num_seqs=2, read=False)
    zeus = MeterFacts("zeus", reads_mid_window=False, minimum_s=1.0, update_period_s=0.1)
    record = steady_state(calls, 2, zeus)
    assert record.seconds == pytest.approx(1.0) and record.output_tokens == 5 and record.energy_j is None
    assert record.null_reason is not None and "zeus meter reads whole windows only" in record.null_reason
    phases = phase_energy(calls, zeus)
    assert phases is not None and phases.prefill_energy_j is None and phases.decode_energy_j is None
    # steps 1, 3, 4, 6 gave first tokens: prefill; 2, 5, 7 decode
    assert phases.prefill_s == pytest.approx(2.0) and phases.decode_s == pytest.approx(1.5)
    assert phases.decode_output_tokens == 2 + 2 + 1
    # each span (one step) lasts 0.5 s: a meter that updates every 0.6 s cannot separate them
    coarse = phase_energy(_recorded(VLLM_STEPS, 5, 2), MeterFacts("rapl", True, 1.0, update_period_s=0.6))
    assert coarse is not None and coarse.prefill_energy_j is None and coarse.prefill_null_reason is not None
    assert "500 ms, under the rapl meter's 600 ms update period" in coarse.prefill_null_reason
    none = MeterFacts("none", reads_mid_window=False, minimum_s=1.0, update_period_s=None)
    assert steady_state(calls, 2, none).null_reason == "no energy meter (--llem-energy=none)"


def test_an_engine_step_before_begin_call_is_a_clear_error() -> None:
    recorder = PhaseRecorder(None, SimulatedClock())
    with pytest.raises(RuntimeError, match="begin_call"):
        recorder(GenerationProgress(1, 1, 0, 1, 0.1))


def test_an_engine_written_before_the_observer_still_runs_with_its_windows_unsplit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A third-party engine (entry point) whose `generate` takes no observer and that has no
    `schedules_requests`: its experiments run as before, without phases or steady state."""
    workload = SimulatedWorkload(seconds_per_token=STEP_S, prefill_seconds_per_token=PREFILL_S_PER_TOKEN)
    with simulated_gpus([SimulatedGpu(power_w=WATTS, counter_period_s=0.0)], workload) as sim:
        backend = sim.backend
        new_generate = backend.generate

        def generate(
            loaded: LoadedModel, batch: PreparedBatch, max_new_tokens: int, fixed_length: bool
        ) -> list[RequestOutput]:
            return new_generate(loaded, batch, max_new_tokens, fixed_length)

        monkeypatch.setattr(backend, "generate", generate)
        monkeypatch.delattr(EngineDefaults, "schedules_requests")  # the built-in engines' shared default
        result = ExperimentSession().run(build_config(("t", SIM)), "t::old-engine")
    assert result.status == "passed", result.error
    assert result.energy_j is not None and result.phases is None and result.steady_state is None
