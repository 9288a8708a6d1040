"""What do pytest-xdist slots cost and keep? (a benchmark script, not a test)

    .venv/bin/python benchmarks/scale/run_xdist.py [--rounds 2] [--output docs/scale/xdist.json]

Two suites, each run as real `pytest` sessions in a scratch directory, `-n 0` and `-n 2`
alternately (`--rounds` times each, so the machine's drift hits both alike):

- CPU: 4 experiments on the built-in `tiny` model (batch sizes 1-4, 8 prompts, 32 new
  tokens, every other setting at its default: 3 repeats, 1 s windows, the `auto` meter).
  Recorded: the session's wall time (start of pytest to its exit), the test ids, tokens and
  statuses of each run (they must agree), and each experiment's tokens/s and slot. Nothing is
  asserted about time: on a shared 2-core VM it is evidence, not a verdict.
- Simulated GPUs: `LLEM_SIMULATED_GPUS=4`, 4 experiments on `cuda:0`/`cuda:1` through the
  `nvml` meter, `-n 0` against `-n 2 --llem-gpus-per-worker 2`, first on the simulated clock
  (`LLEM_SIMULATED_CLOCK=1`: continuous counters, so per-slot energy must equal the `-n 0`
  figure to the counter's millijoule) and then on the wall clock (the 100 ms counter and real sleeps: the
  relative difference per experiment is recorded against the issue's 0.5%).

Prints a Markdown table of both and exits 1 when ids, tokens or statuses differ, or when a
simulated-clock energy differs by more than the counter's millijoule (1e-6 relative).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CPU_SUITE = """
import pytest

@pytest.mark.llem(model="tiny", n_prompts=8, max_new_tokens=32)
@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_tiny(llem, batch_size):
    llem.run(batch_size=batch_size)
"""

GPU_SUITE = """
import pytest

SETTINGS = dict(engine="simulated", model="sim", n_prompts=4, max_new_tokens=256, repeats=3,
                warmup={"n_warmup": 1, "thermal_floor_s": 0}, energy={"meter": "nvml", "baseline_s": 1})

@pytest.mark.llem(**SETTINGS)
@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_gpu(llem, device, batch_size):
    llem.run(device=device, batch_size=batch_size)
"""


def run_session(directory: Path, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One pytest session: wall time and its report's experiments."""
    for old in directory.glob(".llem/runs/*"):
        for path in sorted(old.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        old.rmdir()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    (report_path,) = directory.glob(".llem/runs/*/report.json")
    report = json.loads(report_path.read_text())
    return {
        "args": args,
        "exit_code": completed.returncode,
        "wall_s": round(wall_s, 2),
        "experiments": {
            e["nodeid"]: {
                "status": e["status"],
                "output_tokens": e["output_tokens"],
                "window_passes": e["window_passes"],
                "tokens_per_second": e["tokens_per_second"],
                "energy_j": e["energy_j"],
                "energy_source": e["energy"]["source"] if e["energy"] else None,
                "slot": e["slot"],
            }
            for e in report["experiments"]
        },
    }


def same_outcome(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def key(run: dict[str, Any]) -> dict[str, tuple[str, float]]:
        # tokens per pass: each run calibrates its own passes per window (min_window_s)
        return {test: (e["status"], e["output_tokens"]) for test, e in run["experiments"].items()}

    return key(a) == key(b)


def cpu_benchmark(rounds: int, scratch: Path) -> dict[str, Any]:
    directory = scratch / "cpu"
    directory.mkdir()
    (directory / "test_cpu_suite.py").write_text(CPU_SUITE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[dict[str, Any]]] = {"-n 0": [], "-n 2": []}
    for _ in range(rounds):
        for label, args in (("-n 0", []), ("-n 2", ["-n", "2"])):
            runs[label].append(run_session(directory, args, env))
            print(f"cpu {label}: {runs[label][-1]['wall_s']} s", file=sys.stderr)
    reference = runs["-n 0"][0]
    agree = all(same_outcome(reference, run) for label in runs for run in runs[label])
    return {"runs": runs, "ids_tokens_statuses_agree": agree}


def gpu_benchmark(scratch: Path, simulated_clock: bool) -> dict[str, Any]:
    directory = scratch / ("gpu-simclock" if simulated_clock else "gpu-wallclock")
    directory.mkdir()
    (directory / "test_gpu_suite.py").write_text(GPU_SUITE)
    env = {**os.environ, "LLEM_SIMULATED_GPUS": "4"}
    if simulated_clock:
        env["LLEM_SIMULATED_CLOCK"] = "1"
    serial = run_session(directory, [], env)
    slots = run_session(directory, ["-n", "2", "--llem-gpus-per-worker", "2"], env)
    differences = {}
    for test, expected in serial["experiments"].items():
        got = slots["experiments"][test]["energy_j"]
        differences[test] = (got - expected["energy_j"]) / expected["energy_j"]
    return {"serial": serial, "slots": slots, "relative_energy_difference": differences}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llem-xdist-") as scratch:
        cpu = cpu_benchmark(args.rounds, Path(scratch))
        exact = gpu_benchmark(Path(scratch), simulated_clock=True)
        wall = gpu_benchmark(Path(scratch), simulated_clock=False)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "gpu_simulated_clock": exact,
        "gpu_wall_clock": wall,
    }
    print("| suite | -n 0 wall s | -n 2 wall s | ids, tokens, statuses |")
    print("|---|---|---|---|")
    for k in range(args.rounds):
        serial, parallel = cpu["runs"]["-n 0"][k]["wall_s"], cpu["runs"]["-n 2"][k]["wall_s"]
        print(
            f"| CPU, 4 x tiny, round {k + 1} | {serial} | {parallel} | {'agree' if cpu['ids_tokens_statuses_agree'] else 'DIFFER'} |"
        )
    for name, run in (("simulated clock", exact), ("wall clock", wall)):
        worst = max(abs(d) for d in run["relative_energy_difference"].values())
        print(
            f"| 4 simulated GPUs, 2 per worker, {name} | {run['serial']['wall_s']} | {run['slots']['wall_s']} "
            f"| {'agree' if same_outcome(run['serial'], run['slots']) else 'DIFFER'}; energy differs by at most {worst:.4%} |"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    exact_ok = all(abs(d) < 1e-6 for d in exact["relative_energy_difference"].values())
    agree = cpu["ids_tokens_statuses_agree"] and same_outcome(exact["serial"], exact["slots"])
    return 0 if exact_ok and agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
