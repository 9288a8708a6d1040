"""How good is the A/B gate on this machine? (a benchmark script, not a test)

    .venv/bin/python benchmarks/gate/run_ab_gate.py [--identical 10] [--slowdowns 3,5,10,20]
        [--repeats 10] [--output gate.json]

Builds a scratch user project outside this repository: a git repository whose `model.py` is
the user's own inference code (a small stack of linear layers, generating `TOKENS` steps),
gated with `llem.measure(model.generate, output_tokens=...)`. Then, each as a real
`pytest --llem-ab HEAD` session (base = the commit, head = the working tree):

- `--identical` runs with the working tree unchanged: every verdict should be "unchanged"
  (a "worse" or "better" here is a false alarm; "inconclusive" is honest but unhelpful);
- one run per slowdown: the pull request edits `EXTRA_STEPS` in `model.py` - that many of the
  generation steps run one more layer - so the work grows in model code while the config and
  the test ids stay the same. `EXTRA_STEPS` for each target slowdown is calibrated first by
  bare timing (interleaved, medians of paired ratios), and the measured bare slowdown is
  reported beside the verdict.
- a plain `pytest` run of the same suite right before each identical A/B run, for the
  wall-time ratio (target: A/B <= 2.2x): the median A/B wall time of the identical runs over
  the median plain one, taken alternately so the machine's drift hits both alike.

Prints every verdict with change, interval, p-value and wall time, then false alarms,
detections and wall times; `--output` writes the same as JSON. Exits 1 when an expectation
fails: any "worse" or "better" on identical code, any slowdown >= 5% not flagged "worse", or
any slowdown flagged "better".
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

MODEL = '''"""The project's own inference code. The pull request edits EXTRA_STEPS."""
import torch

EXTRA_STEPS = {extra_steps}  # steps that run one more layer: the injected slowdown
WIDTH, LAYERS, BATCH, TOKENS = 256, 4, 64, {tokens}

torch.manual_seed(0)
_layers = [torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)]
_extra = torch.nn.Linear(WIDTH, WIDTH)
_start = torch.randn(BATCH, WIDTH)


@torch.inference_mode()
def generate(extra_steps=None):
    extra = EXTRA_STEPS if extra_steps is None else extra_steps
    x = _start
    for step in range(TOKENS):
        for layer in _layers:
            x = torch.tanh(layer(x))
        if step < extra:  # one more layer on `extra` of the TOKENS steps: ~1/LAYERS each
            x = torch.tanh(_extra(x))
    return x
'''

CONFTEST = """
import torch

torch.set_num_threads(1)
"""

BENCH = """
import pytest

import model


@pytest.mark.llem(repeats={repeats}, warmup={warmup}, num_threads=1,
                  energy={{"meter": "estimate", "baseline_s": 0}})
def test_generate(llem):
    llem.measure(model.generate, output_tokens=model.TOKENS * model.BATCH)
"""

CALIBRATE = """
import json, statistics, sys, time
import torch
torch.set_num_threads(1)
import model

grid = json.loads(sys.argv[1])
rounds = int(sys.argv[2])
for _ in range(3):
    model.generate(0)
ratios = {k: [] for k in grid}
for _ in range(rounds):
    for k in grid:  # base, then k, adjacent: drift cancels in the ratio
        t0 = time.perf_counter(); model.generate(0); base = time.perf_counter() - t0
        t0 = time.perf_counter(); model.generate(k); slow = time.perf_counter() - t0
        ratios[k].append(slow / base)
print(json.dumps({k: statistics.median(v) for k, v in ratios.items()}))
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=gate", "-c", "user.email=gate@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def make_project(root: Path, tokens: int, repeats: int, warmup: int) -> None:
    (root / "model.py").write_text(MODEL.format(extra_steps=0, tokens=tokens))
    (root / "conftest.py").write_text(CONFTEST)
    (root / "test_bench.py").write_text(BENCH.format(repeats=repeats, warmup=warmup))
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "base")


def calibrate(root: Path, targets: list[float], rounds: int, tokens: int) -> dict[float, tuple[int, float]]:
    """EXTRA_STEPS for each target slowdown (%), from a fit through the origin of bare paired
    timings (the extra work is proportional to the steps), and the bare slowdown measured at
    the chosen value."""
    grid = [tokens // 8, tokens // 4, tokens // 2, tokens]
    measured = _bare(root, grid, rounds)
    slope = sum((measured[k] - 1) * k for k in grid) / sum(k * k for k in grid)  # per extra step
    chosen = {t: min(tokens, max(1, round(t / 100 / slope))) for t in targets}
    check = _bare(root, sorted(set(chosen.values())), rounds)
    return {t: (steps, (check[steps] - 1) * 100) for t, steps in chosen.items()}


def _bare(root: Path, grid: list[int], rounds: int) -> dict[int, float]:
    done = subprocess.run(
        [sys.executable, "-c", CALIBRATE, json.dumps(grid), str(rounds)],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )
    return {int(k): float(v) for k, v in json.loads(done.stdout).items()}


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
        interval = f"{low:.3f}-{high:.3f}" if low is not None and high is not None else "n/a"
        p = "n/a" if m.get("p_value") is None else f"{m['p_value']:.3g}"
        parts.append(f"{m['metric']} {m['change_pct']:+.1f}% CI {interval} p={p} {m['verdict']}")
    return f"{comparison['verdict']:>12}  " + "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--identical", type=int, default=10, help="A/B runs of identical code (default 10)")
    parser.add_argument(
        "--slowdowns", default="3,5,10,20", help="injected slowdowns in %% (default 3,5,10,20)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="measurement windows = pairs (default 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200, help="generation steps per call (window length)")
    parser.add_argument("--calibration-rounds", type=int, default=15)
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()
    targets = [float(t) for t in args.slowdowns.split(",") if t]
    results: dict[str, Any] = {"settings": vars(args), "identical": [], "slowdowns": []}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="llem-ab-gate-") as scratch:
        root = Path(scratch)
        make_project(root, args.tokens, args.repeats, args.warmup)
        calibration = calibrate(root, targets, args.calibration_rounds, args.tokens) if targets else {}
        plain_walls: list[float] = []
        for index in range(args.identical):
            code, plain_wall, _ = run_pytest(root)
            plain_walls.append(plain_wall)
            print(f"plain     {index + 1:>2}: exit {code}, {plain_wall:6.1f} s")
            code, wall, comparison = run_pytest(root, "--llem-ab=HEAD")
            verdict = comparison["verdict"] if comparison else "error"
            results["identical"].append({"exit": code, "wall_s": wall, "comparison": comparison})
            print(f"identical {index + 1:>2}: exit {code}, {wall:6.1f} s {describe(comparison)}")
            if verdict in ("worse", "better", "error"):
                failures.append(f"identical run {index + 1}: {verdict}")
        for target, (steps, bare) in calibration.items():
            (root / "model.py").write_text(MODEL.format(extra_steps=steps, tokens=args.tokens))
            code, wall, comparison = run_pytest(root, "--llem-ab=HEAD")
            verdict = comparison["verdict"] if comparison else "error"
            results["slowdowns"].append(
                {
                    "target_pct": target,
                    "extra_steps": steps,
                    "bare_pct": bare,
                    "exit": code,
                    "wall_s": wall,
                    "comparison": comparison,
                }
            )
            print(
                f"+{target:g}% (EXTRA_STEPS={steps}, bare {bare:+.1f}%): exit {code}, {wall:6.1f} s "
                f"{describe(comparison)}"
            )
            if verdict == "better" or (target >= 5 and verdict != "worse"):
                failures.append(f"+{target:g}%: {verdict}")
        (root / "model.py").write_text(MODEL.format(extra_steps=0, tokens=args.tokens))
    identical = [r["comparison"]["verdict"] if r["comparison"] else "error" for r in results["identical"]]
    detected = [r for r in results["slowdowns"] if r["comparison"] and r["comparison"]["verdict"] == "worse"]
    ab_walls = [r["wall_s"] for r in results["identical"]]
    plain_wall = statistics.median(plain_walls) if plain_walls else None
    summary = {
        "false_alarms": sum(v in ("worse", "better") for v in identical),
        "identical_runs": len(identical),
        "identical_verdicts": {v: identical.count(v) for v in sorted(set(identical))},
        "detected": [r["target_pct"] for r in detected],
        "slowdowns": [r["target_pct"] for r in results["slowdowns"]],
        "plain_wall_s_median": plain_wall,
        "ab_wall_s_median": statistics.median(ab_walls) if ab_walls else None,
        "ab_over_plain": statistics.median(ab_walls) / plain_wall if ab_walls and plain_wall else None,
        "failures": failures,
    }
    results["summary"] = summary
    print(json.dumps(summary, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
