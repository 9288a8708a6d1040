"""The engines side by side on the same work, and what measuring costs vLLM.

`test_engine`: SmolLM2-135M through each installed engine on the same built-in prompts and the
same number of output tokens, each scheduled the engine's own way (transformers: one static
batch; vLLM: every prompt submitted at once, `max_num_seqs` = the prompt count; llama.cpp: the
Q4_1 GGUF, one prompt at a time). The session's summary table compares tokens per second and
J per output token (estimated on a machine without energy counters); per-request latency
percentiles are in the report. An engine that is not installed is skipped with the reason.

`test_vllm_harness_cost`: `llem_session.run()` against a bare `LLM.generate` loop on the same
loaded engine, prompts (as token ids) and sampling settings, as ABBA pairs (see _pairing.py).
The median per-pair ratio of tokens per second is recorded with `llem.record_figure` beside
its target >= 0.97. It is not asserted: on a shared 2-core machine a timing is a
measurement to report, not a pass/fail verdict.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

import pytest
from _pairing import describe, paired_ratios

from pytest_llem import ExperimentSession, LlemFixture
from pytest_llem.datasets import load_prompts
from pytest_llem.engines import ENGINES, get_backend

PROMPTS, TOKENS = 8, 32
COMMON: dict[str, object] = {
    "model": "smollm2-135m",
    "device": "cpu",
    "n_prompts": PROMPTS,
    "max_new_tokens": TOKENS,
    "warmup": 2,
    "repeats": 3,
}
ENGINE_SETTINGS: dict[str, dict[str, object]] = {
    "transformers": {"dtype": "bfloat16", "batch_size": PROMPTS},
    "vllm": {"dtype": "bfloat16", "batch_size": PROMPTS},
    "llama_cpp": {"batch_size": 1},
}
HARNESS_PAIRS = 20
TARGET_RATIO = 0.97


def _missing(engine: str) -> str | None:
    """Why `engine` cannot run here, or None."""
    if any(importlib.util.find_spec(name) is None for name in ENGINES[engine].requires):
        return f"engine {engine!r} is not installed here ({ENGINES[engine].install})"
    return None


def _require(engine: str) -> None:
    reason = _missing(engine)
    if reason:
        pytest.skip(reason)


@pytest.mark.llem(**COMMON)
@pytest.mark.parametrize("engine", list(ENGINE_SETTINGS))
def test_engine(llem: LlemFixture, engine: str, record_property: Callable[[str, object], None]) -> None:
    _require(engine)
    result = llem.run(engine=engine, **ENGINE_SETTINGS[engine])
    # every window holds the passes calibrated to last min_window_s (1 s on CPU)
    expected = PROMPTS * TOKENS * result.window_passes
    assert [r.output_tokens for r in result.repeats] == [expected] * len(result.repeats)
    record_property("tokens_per_second", round(result.tokens_per_second, 2))
    if result.energy_per_output_token_j is not None:
        record_property(f"j_per_output_token_{result.energy_label}", result.energy_per_output_token_j)
    if engine != "transformers":
        assert result.latency is not None and result.latency.scope == "request"


# skipped before setup: the marker's engine is checked in pre-flight, which would error the test
@pytest.mark.skipif(_missing("vllm") is not None, reason=_missing("vllm") or "")
@pytest.mark.llem(**COMMON, engine="vllm", **ENGINE_SETTINGS["vllm"])
def test_vllm_harness_cost(
    llem: LlemFixture, llem_session: ExperimentSession, request: pytest.FixtureRequest
) -> None:
    _require("vllm")
    from vllm import SamplingParams

    loaded = llem.load()
    llem.run(repeats=1)  # warms the engine up
    config = llem.config
    prompts = load_prompts(config.dataset, config.n_prompts, config.seed, loaded.tokenizer)
    prepared = get_backend("vllm").prepare(loaded, prompts, config.batch_size, config.max_input_tokens)
    requests = [{"prompt_token_ids": ids} for ids in prepared.batches[0].token_ids]
    params = SamplingParams(temperature=0.0, max_tokens=TOKENS, min_tokens=TOKENS, detokenize=False)
    round_config = llem.settings(repeats=1, warmup=0)

    def llem_tokens_per_second() -> float:
        result = llem_session.run(round_config, request.node.nodeid)
        assert result.status == "passed", result.error
        return float(result.tokens_per_second)

    def bare_tokens_per_second() -> float:
        """What a vLLM user without pytest-llem would write: generate, count, time."""
        start = time.perf_counter()
        outputs = loaded.model.generate(requests, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed

    ratio, spread = describe(paired_ratios(llem_tokens_per_second, bare_tokens_per_second, HARNESS_PAIRS))
    llem.record_figure(
        "llem_over_bare_vllm_tokens_per_second_ratio",
        round(ratio, 4),
        at_least=TARGET_RATIO,
        detail=f"median of {HARNESS_PAIRS} ABBA pairs ({spread}) against a bare LLM.generate loop",
    )


@pytest.mark.skipif(_missing("llama_cpp") is not None, reason=_missing("llama_cpp") or "")
@pytest.mark.llem(**COMMON, engine="llama_cpp", **ENGINE_SETTINGS["llama_cpp"])
def test_llama_cpp_harness_cost(
    llem: LlemFixture, llem_session: ExperimentSession, request: pytest.FixtureRequest
) -> None:
    """`llem_session.run()` (llama.cpp in its engine host, a process of its own) against a
    bare greedy streaming loop on a `Llama` in this process: what isolation plus measurement
    cost llama.cpp, as ABBA pairs of one pass each."""
    _require("llama_cpp")
    loaded = llem.load()  # in this process, for the bare side
    llem.run(repeats=1)  # warms the engine host up
    config = llem.config
    prompts = load_prompts(config.dataset, config.n_prompts, config.seed, loaded.tokenizer)
    prepared = get_backend("llama_cpp").prepare(loaded, prompts, 1, config.max_input_tokens)
    token_ids = [batch[0] for batch in prepared.batches]
    round_config = llem.settings(repeats=1, warmup=0, min_window_s=0)  # one pass, as the bare loop

    def llem_tokens_per_second() -> float:
        result = llem_session.run(round_config, request.node.nodeid)
        assert result.status == "passed", result.error
        return float(result.tokens_per_second)

    def bare_tokens_per_second() -> float:
        """What a llama-cpp-python user would write: reset, stream greedily, count, time."""
        llm = loaded.model
        generated = 0
        start = time.perf_counter()
        for ids in token_ids:
            llm.reset()
            for count, _ in enumerate(llm.generate(ids, temp=0.0, reset=True), start=1):
                if count == TOKENS:
                    break
            generated += count
        return generated / (time.perf_counter() - start)

    ratio, spread = describe(paired_ratios(llem_tokens_per_second, bare_tokens_per_second, HARNESS_PAIRS))
    llem.record_figure(
        "llem_over_bare_llama_cpp_tokens_per_second_ratio",
        round(ratio, 4),
        at_least=TARGET_RATIO,
        detail=f"median of {HARNESS_PAIRS} ABBA pairs ({spread}); llem in its engine host, bare "
        "Llama.generate in this process",
    )
