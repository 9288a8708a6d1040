"""A user's first answer: one pytest-llem experiment against the ten-line script they would
write without it, as whole processes in alternation, plus where the session's time goes and
what the plugin costs collection. Figures are recorded, never asserted.

    .venv/bin/python benchmarks/first_answer.py [--pairs 4] [--out docs/performance-runs/first-answer.json]

- The experiment: SmolLM2-135M with transformers, 4 prompts x 32 tokens at batch 1, one
  warmup call, one window (`repeats=1`), the default `min_window_s`, no idle baseline.
- The bare script: load the same model with transformers, one warmup `generate`, then the same
  4 prompts x 32 tokens at batch 1.
- One warm-up run of each, then `--pairs` pairs, alternating which goes first; each process's
  wall time, CPU time (user + system, its descendants included) and peak RSS (the largest
  process of its tree) from `wait4`. The ratio is taken pair by pair; the median is reported.
- The breakdown: one more pytest session with a small conftest that timestamps each step
  (start-up, collection, pre-flight, environment snapshot, model load, warmup, calibration,
  windows, report, engine close).
- Collection: `pytest --collect-only` on a file of 50 llem tests with the plugin and with
  `-p no:llem`, 8 alternating pairs, the median difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, TypedDict

Side = Literal["pytest_llem", "bare"]
SIDES: tuple[Side, ...] = ("pytest_llem", "bare")


class Pair(TypedDict):
    """One alternating pair: each side's `_run` figures and the wall-time ratio llem/bare."""

    pytest_llem: dict[str, float]
    bare: dict[str, float]
    ratio: float


TEST = """
import pytest


@pytest.mark.llem(model="smollm2-135m", n_prompts=4, max_new_tokens=32, batch_size=1, repeats=1, warmup=1)
def test_one(llem):
    llem.run()
"""

BARE = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pytest_llem.datasets import load_prompts
from pytest_llem.engines.models import resolve_model

path = resolve_model("smollm2-135m").path  # the same converted checkpoint (cached)
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
prompts = load_prompts("builtin", 4, 0, tokenizer).texts
with torch.inference_mode():
    for prompt in [prompts[0], *prompts]:  # one warmup call, then the 4 prompts
        ids = tokenizer(prompt, return_tensors="pt")
        model.generate(**ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
"""

# timestamps of the session's steps, printed as JSON on stderr at the end
STEPS_CONFTEST = """
import functools, json, os, sys, time

import pytest

T0 = float(os.environ["LLEM_BENCH_T0"])
marks = [("interpreter, pytest and plugin start-up", time.time() - T0)]


def _timed(owner, name, label):
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        finally:
            marks.append((label, time.time() - T0))

    setattr(owner, name, wrapper)


from pytest_llem.measure import session as S
from pytest_llem.measure import warmup as W
from pytest_llem.store import writer as R

_timed(S.ExperimentSession, "preflight", "pre-flight (engine host start, model lookup)")
_timed(S.ExperimentSession, "environment", "environment snapshot")
_timed(S.ExperimentSession, "load_model", "model load")
_timed(S, "thermal_floor", "warmup")
_timed(S.ExperimentSession, "_calibrate", "window calibration")
_timed(S, "experiment_result", "windows")  # marked when the metrics of the windows are done
_timed(R.ReportWriter, "add_experiment", "metrics and report append")
_timed(S.ExperimentSession, "close", "engine close")
_timed(R.ReportWriter, "finish", "report compaction (JSON, Parquet)")


def pytest_collection_finish(session):
    marks.append(("collection", time.time() - T0))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    marks.append(("terminal summary and the rest", time.time() - T0))
    print("LLEM_STEPS " + json.dumps(marks), file=sys.stderr)
"""


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall, CPU (the tree's user + system) and peak RSS (MiB) of one whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}


def _session(python: str, extra: list[str]) -> list[str]:
    """The pytest session of the one experiment (no idle baseline, as the bare script has none)."""
    return [
        python,
        "-m",
        "pytest",
        "test_one.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--llem-baseline-s",
        "0",
        *extra,
    ]


def _steps(python: str, work: Path, extra: list[str]) -> list[dict[str, float | str]]:
    (work / "conftest.py").write_text(STEPS_CONFTEST)
    env = {**os.environ, "LLEM_BENCH_T0": repr(time.time())}
    done = subprocess.run(
        _session(python, extra),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    (work / "conftest.py").unlink()
    line = next(text for text in done.stderr.splitlines() if text.startswith("LLEM_STEPS "))
    marks = json.loads(line.removeprefix("LLEM_STEPS "))
    steps: list[dict[str, float | str]] = []
    started, previous = 0.0, 0.0
    for label, at in marks:
        if steps and steps[-1]["step"] == label:  # the same step again at once: one step
            steps[-1].update(seconds=round(at - started, 3), ends_at_s=round(at, 3))
        else:
            started = previous
            steps.append({"step": label, "seconds": round(at - started, 3), "ends_at_s": round(at, 3)})
        previous = at
    return steps


def _collection(python: str, work: Path, pairs: int = 8) -> dict[str, float]:
    body = ["import pytest", ""]
    for k in range(50):
        body += [
            '@pytest.mark.llem(model="tiny", n_prompts=1, max_new_tokens=2)',
            f"def test_{k}(llem):",
            "    llem.run()",
            "",
        ]
    directory = work / "collection"
    directory.mkdir()
    (directory / "test_many.py").write_text("\n".join(body))
    (directory / "pytest.ini").write_text("[pytest]\n")
    command = [python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "test_many.py"]
    _run(command, directory)  # file cache
    with_plugin: list[float] = []
    without: list[float] = []
    for pair in range(pairs):
        runs = [(with_plugin, command), (without, [*command, "-p", "no:llem"])]
        for into, line in runs if pair % 2 == 0 else reversed(runs):
            into.append(_run(line, directory)["wall_s"])
    return {
        "with_plugin_s": round(statistics.median(with_plugin), 3),
        "without_s": round(statistics.median(without), 3),
        "plugin_cost_s": round(
            statistics.median(a - b for a, b in zip(with_plugin, without, strict=True)), 3
        ),
        "pairs": pairs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument(
        "--pytest-arg",
        action="append",
        default=[],
        help="an extra argument for the pytest session, e.g. -p no:hypothesispytest: this repository's "
        "test extras bring plugins (Hypothesis's terminal summary costs about 0.5 s) that a user's "
        "environment with only pytest-llem does not load",
    )
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="llem-first-answer-") as name:
        work = Path(name)
        (work / "test_one.py").write_text(TEST)
        (work / "bare.py").write_text(BARE)
        (work / "pytest.ini").write_text("[pytest]\n")
        session = _session(python, args.pytest_arg)
        bare = [python, "bare.py"]
        _run(session, work)  # warm-up: converts and caches the model once, warms the file cache
        _run(bare, work)
        pairs: list[Pair] = []
        for pair in range(args.pairs):
            first, second = (session, bare) if pair % 2 == 0 else (bare, session)
            timed = {tuple(first): _run(first, work), tuple(second): _run(second, work)}
            llem, plain = timed[tuple(session)], timed[tuple(bare)]
            pairs.append({"pytest_llem": llem, "bare": plain, "ratio": llem["wall_s"] / plain["wall_s"]})
            print(
                f"pair {pair + 1}: pytest-llem {llem['wall_s']:.2f} s, bare {plain['wall_s']:.2f} s, ratio {pairs[-1]['ratio']:.3f}"
            )
        steps = _steps(python, work, args.pytest_arg)
        collection = _collection(python, work)

    def median(side: Side, key: str) -> float:
        return round(statistics.median(p[side][key] for p in pairs), 3)

    figures = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "command": "python benchmarks/first_answer.py " + " ".join(sys.argv[1:]),
        "pairs": pairs,
        "median": {
            side: {key: median(side, key) for key in ("wall_s", "cpu_s", "peak_rss_mib")} for side in SIDES
        },
        "ratio_wall_median": round(statistics.median(p["ratio"] for p in pairs), 3),
        "ratio_wall_range": [
            round(min(p["ratio"] for p in pairs), 3),
            round(max(p["ratio"] for p in pairs), 3),
        ],
        "steps": steps,
        "collection_50_tests": collection,
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "pairs"}, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
