"""How good is the regression gate on this machine? (a benchmark script, not a test)

    .venv/bin/python benchmarks/gate/run_gate_demo.py [--pairs 5] [--repeats 12]

Runs, each as a real `pytest` session of the benchmark below, in a scratch directory:
- `--pairs` pairs of runs of identical code, the second of each pair gated with
  `--llem-compare` against the first: every verdict should be "unchanged";
  every repeat also runs a pinned reference model in the adjacent window (`reference_model`),
  and the gate compares the drift-cancelling ratios `relative_time` and `relative_energy`;
- one run of the same benchmark after a "pull request" that adds 20% more work (a sixth
  transformer block on a model of five, same config and config hash): it should fail with a
  significant regression, and `llem compare` should exit 1 (and 0 for the identical pairs).
Prints every verdict with its change, p-value and interval, and exits 1 if any expectation fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCHMARK = """
import pytest

@pytest.mark.llem(model={model!r}, reference_model={reference!r}, max_new_tokens=16, n_prompts=16,
                  batch_size=16, repeats={repeats}, warmup=2, num_threads=1,
                  energy={{"meter": "estimate", "baseline_s": 0}})
def test_block_stack(llem):
    llem.run()
"""


def build_model(directory: Path, layers: int) -> None:
    from pytest_llem.testing.checkpoints import build_block_model

    build_block_model(directory, layers, width=512, heads=8)


def pytest_run(workdir: Path, *args: str) -> int:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_bench.py", *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True).returncode


def comparison(workdir: Path, run: str) -> dict[str, Any]:
    """The run's first experiment's `comparison` block of report.json, as JSON."""
    report = json.loads((workdir / ".llem" / "runs" / run / "report.json").read_text())
    found: dict[str, Any] = report["experiments"][0]["comparison"]
    return found


def describe(found: dict[str, Any]) -> str:
    parts = []
    for m in found.get("metrics", []):
        p = "n/a" if m["p_value"] is None else f"{m['p_value']:.3g}"
        low, high = m["ratio_ci95_low"], m["ratio_ci95_high"]
        interval = "n/a" if low is None or high is None else f"{low:.3f}-{high:.3f}"
        parts.append(f"{m['metric']} {m['change_pct']:+.1f}% p={p} CI {interval} {m['verdict']}")
    return f"{found['verdict']:>9}  " + "; ".join(parts)


def llem_compare(workdir: Path, base: str, head: str) -> int:
    command = [
        sys.executable,
        "-m",
        "pytest_llem.cli.commands",
        "--dir",
        str(workdir / ".llem"),
        "compare",
        base,
        head,
    ]
    return subprocess.run(command, capture_output=True, text=True).returncode


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llem-gate-demo-") as name:
        return demo(Path(name), args.pairs, args.repeats)


def demo(workdir: Path, pairs: int, repeats: int) -> int:
    model, reference = workdir / "model", workdir / "reference"
    build_model(model, layers=5)
    build_model(reference, layers=5)  # pinned: the pull request never touches it
    (workdir / "test_bench.py").write_text(
        BENCHMARK.format(model=str(model), reference=str(reference), repeats=repeats)
    )
    ok = True
    for pair in range(pairs):
        pytest_run(workdir, f"--llem-save=base{pair}")
        code = pytest_run(workdir, f"--llem-save=head{pair}", f"--llem-compare=base{pair}")
        exit_code = llem_compare(workdir, f"base{pair}", f"head{pair}")
        found = comparison(workdir, f"head{pair}")
        print(f"identical pair {pair}: pytest exit {code}, llem compare exit {exit_code}, {describe(found)}")
        ok &= code == 0 and exit_code == 0 and found["verdict"] != "worse"
    build_model(model, layers=6)
    code = pytest_run(workdir, "--llem-save=slow", "--llem-compare=base0")
    exit_code = llem_compare(workdir, "base0", "slow")
    found = comparison(workdir, "slow")
    print(f"+20% work (6 blocks vs 5): pytest exit {code}, llem compare exit {exit_code}, {describe(found)}")
    ok &= code == 1 and exit_code == 1 and found["verdict"] == "worse"
    print("all expectations met" if ok else "EXPECTATIONS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
