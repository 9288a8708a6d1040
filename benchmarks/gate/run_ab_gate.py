"""How good is the A/B gate at its defaults on this machine? (a benchmark script, not a test)

    .venv/bin/python benchmarks/gate/run_ab_gate.py [--identical 10] [--slowdowns 3,5,10,20]
        [--rounds 3] [--output docs/gate/ab-defaults.json]

Builds a scratch user project outside this repository, as a new user would write it: a git
repository holding a GPT-2-shaped checkpoint (`model/`, 8 blocks of width 128) and one
benchmark test, `@pytest.mark.llem(n_prompts=4, max_new_tokens=32)` + `llem.run(model=...)`,
with no other setting: no repeats, no threads, no meter. Then, each as a real
`pytest --llem-ab HEAD` session with nothing but `--llem-ab` (base = the commit, head = the
working tree):

- `--identical` runs with the working tree unchanged: a "worse" or "better" is a false alarm,
  "unchanged" the right answer, "inconclusive" honest but unhelpful;
- `--rounds` rounds of one run per slowdown: the pull request rebuilds the checkpoint with a
  wider MLP (`n_inner`), so the work per token grows in the model while the config and the
  test ids stay the same. The width for each target is calibrated first by bare paired timing
  (one thread, as A/B runs on this machine), and the measured bare slowdown is reported;
- a plain `pytest` run of the same suite before each identical A/B run, for the wall-time
  ratio (goal: at most 3x for a decided verdict), taken alternately so drift hits both alike.

Prints every verdict with change, interval, pairs and wall time, then the summary; `--output`
writes it all as JSON, both sides' windows included. Exits 1 when an expectation of issue 15
fails: any "worse"/"better" on identical code, or a slowdown not flagged "worse".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WIDTH, LAYERS, BASE_INNER = 128, 8, 512

BENCH = """
from pathlib import Path

import pytest

MODEL = str(Path(__file__).parent / "model")


@pytest.mark.llem(n_prompts=4, max_new_tokens=32)
def test_generate(llem):
    llem.run(model=MODEL)
"""

BUILD = """
import sys
from pathlib import Path
from pytest_llem.testing.checkpoints import build_block_model
build_block_model(Path(sys.argv[1]), layers=int(sys.argv[2]), width=int(sys.argv[3]), inner=int(sys.argv[4]))
"""

CALIBRATE = """
import json, statistics, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
paths = json.loads(sys.argv[1])
rounds = int(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(paths["base"])
prompts = [tokenizer(f"a prompt number {i} for timing", return_tensors="pt") for i in range(4)]
models = {k: AutoModelForCausalLM.from_pretrained(p).eval() for k, p in paths.items()}

@torch.inference_mode()
def timed(model):
    start = time.perf_counter()
    for p in prompts:
        model.generate(**p, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - start

for model in models.values():
    timed(model)
ratios = {k: [] for k in paths if k != "base"}
for _ in range(rounds):
    for k in ratios:  # base, then k, adjacent: drift cancels in the ratio
        base = timed(models["base"])
        ratios[k].append(timed(models[k]) / base)
print(json.dumps({k: statistics.median(v) for k, v in ratios.items()}))
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=gate", "-c", "user.email=gate@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def build(directory: Path, inner: int) -> None:
    subprocess.run(
        [sys.executable, "-c", BUILD, str(directory), str(LAYERS), str(WIDTH), str(inner)],
        check=True,
        capture_output=True,
    )


def make_project(root: Path) -> None:
    build(root / "model", BASE_INNER)
    (root / "test_bench.py").write_text(BENCH)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "base")


def _bare(root: Path, candidates: dict[str, Path], rounds: int) -> dict[str, float]:
    paths = {"base": str(root / "model"), **{k: str(v) for k, v in candidates.items()}}
    done = subprocess.run(
        [sys.executable, "-c", CALIBRATE, json.dumps(paths), str(rounds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return {k: float(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def calibrate(root: Path, scratch: Path, targets: list[float], rounds: int) -> dict[float, tuple[int, float]]:
    """The MLP width for each target slowdown (%), from a line through the measured slowdowns
    of a grid of widths, and the bare slowdown measured at the chosen width."""
    grid = [768, 1024, 1536, 2048]
    for inner in grid:
        build(scratch / f"inner-{inner}", inner)
    measured = _bare(root, {str(i): scratch / f"inner-{i}" for i in grid}, rounds)
    extra = [i - BASE_INNER for i in grid]
    slope = sum((measured[str(i)] - 1) * x for i, x in zip(grid, extra, strict=True)) / sum(
        x * x for x in extra
    )
    chosen = {t: BASE_INNER + max(8, round(t / 100 / slope / 8) * 8) for t in targets}
    for inner in set(chosen.values()):
        build(scratch / f"inner-{inner}", inner)
    check = _bare(root, {str(i): scratch / f"inner-{i}" for i in set(chosen.values())}, rounds)
    return {t: (inner, (check[str(inner)] - 1) * 100) for t, inner in chosen.items()}


WINDOW_METRICS = ("energy_per_output_token_j", "tokens_per_second", "window_s")


def run_pytest(root: Path, *args: str) -> tuple[int, float, dict[str, Any] | None]:
    report = root / "head.json"
    report.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--llem-json={report}", *args],
        cwd=root,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if not report.exists():
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        return done.returncode, wall, None
    experiment = json.loads(report.read_text())["experiments"][0]
    comparison = experiment.get("comparison")
    if comparison and comparison.get("base_report"):  # keep both sides' windows for the record
        base = json.loads(Path(comparison["base_report"]).read_text())["experiments"][0]
        comparison["windows"] = {
            side: {m: [r.get(m) for r in found["repeats"]] for m in WINDOW_METRICS}
            for side, found in (("base", base), ("head", experiment))
        }
    return done.returncode, wall, comparison


def describe(comparison: dict[str, Any] | None) -> str:
    if comparison is None:
        return "no comparison (see output above)"
    parts = []
    for m in comparison.get("metrics", []):
        if m.get("threshold_pct") is None:
            continue
        low, high = m.get("ratio_ci95_low"), m.get("ratio_ci95_high")
        interval = f"{low:.3f}-{high:.3f}" if low is not None and high is not None else "open"
        parts.append(f"{m['metric']} {m['change_pct']:+.1f}% CS {interval} {m['verdict']}")
    pairs = f"{comparison.get('pairs_taken')} pairs ({comparison.get('stopped_because')})"
    return f"{comparison['verdict']:>12} after {pairs}  " + "; ".join(parts)


def _verdict(comparison: dict[str, Any] | None) -> str:
    return str(comparison["verdict"]) if comparison else "error"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--identical", type=int, default=10, help="A/B runs of identical code (default 10)")
    parser.add_argument(
        "--slowdowns", default="3,5,10,20", help="injected slowdowns in %% (default 3,5,10,20)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the slowdown runs (default 3)")
    parser.add_argument("--calibration-rounds", type=int, default=15)
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()
    targets = [float(t) for t in args.slowdowns.split(",") if t]
    results: dict[str, Any] = {"settings": vars(args), "identical": [], "slowdowns": []}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="llem-ab-gate-") as scratch:
        root = Path(scratch) / "project"
        root.mkdir()
        make_project(root)
        calibration = calibrate(root, Path(scratch), targets, args.calibration_rounds) if targets else {}
        results["calibration"] = {str(t): {"inner": i, "bare_pct": b} for t, (i, b) in calibration.items()}
        print("calibration:", json.dumps(results["calibration"]), flush=True)
        plain_walls: list[float] = []
        for index in range(args.identical):
            code, plain_wall, _ = run_pytest(root)
            plain_walls.append(plain_wall)
            print(f"plain     {index + 1:>2}: exit {code}, {plain_wall:6.1f} s", flush=True)
            code, wall, comparison = run_pytest(root, "--llem-ab=HEAD")
            results["identical"].append({"exit": code, "wall_s": wall, "comparison": comparison})
            print(f"identical {index + 1:>2}: exit {code}, {wall:6.1f} s {describe(comparison)}", flush=True)
            if _verdict(comparison) in ("worse", "better", "error"):
                failures.append(f"identical run {index + 1}: {_verdict(comparison)}")
        for round_ in range(1, args.rounds + 1):
            for target, (inner, bare) in calibration.items():
                build(root / "model", inner)  # the pull request: a wider MLP in the checkpoint
                code, wall, comparison = run_pytest(root, "--llem-ab=HEAD")
                results["slowdowns"].append(
                    {
                        "round": round_,
                        "target_pct": target,
                        "inner": inner,
                        "bare_pct": bare,
                        "exit": code,
                        "wall_s": wall,
                        "comparison": comparison,
                    }
                )
                print(
                    f"round {round_} +{target:g}% (n_inner {inner}, bare {bare:+.1f}%): exit {code}, "
                    f"{wall:6.1f} s {describe(comparison)}",
                    flush=True,
                )
                if _verdict(comparison) != "worse":
                    failures.append(f"round {round_} +{target:g}%: {_verdict(comparison)}")
        build(root / "model", BASE_INNER)
    identical = [_verdict(r["comparison"]) for r in results["identical"]]
    slow = results["slowdowns"]
    ab_walls = [r["wall_s"] for r in results["identical"]]
    decided_walls = [
        r["wall_s"] for r in [*results["identical"], *slow] if _verdict(r["comparison"]) != "inconclusive"
    ]
    plain_wall_median = statistics.median(plain_walls) if plain_walls else None
    summary = {
        "false_alarms": sum(v in ("worse", "better") for v in identical),
        "identical_runs": len(identical),
        "identical_verdicts": {v: identical.count(v) for v in sorted(set(identical))},
        "slowdown_verdicts": {
            f"{t:g}%": [_verdict(r["comparison"]) for r in slow if r["target_pct"] == t] for t in targets
        },
        "pairs_identical": [
            r["comparison"].get("pairs_taken") if r["comparison"] else None for r in results["identical"]
        ],
        "plain_wall_s_median": plain_wall_median,
        "ab_wall_s_median_identical": statistics.median(ab_walls) if ab_walls else None,
        "ab_over_plain_identical": statistics.median(ab_walls) / plain_wall_median
        if ab_walls and plain_wall_median
        else None,
        "ab_over_plain_decided": statistics.median(decided_walls) / plain_wall_median
        if decided_walls and plain_wall_median
        else None,
        "failures": failures,
    }
    results["summary"] = summary
    print(json.dumps(summary, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
