"""The A/B gate's stopping rule on a simulated noisy machine: false alarms and detections.

    .venv/bin/python benchmarks/gate/simulate_sequential.py [--sequences 10000]

Prints the Markdown table in docs/gate.md: for each window noise and each true slowdown,
the share of sequences that ended "worse" / "unchanged" / "inconclusive" / "better" (any
gated metric; per metric for the false alarms) and the mean pairs taken, at the gate's
defaults (2% thresholds, alpha 0.05, pairs from 3 to 60). Pure and seeded: the same table on
every machine. `tests/gate/test_sequential.py` runs the same simulation and fails when a
false-alarm rate exceeds alpha.
"""

from __future__ import annotations

import argparse

from pytest_llem.gate.error_rates import GATED, Noise, simulate
from pytest_llem.gate.sequential import ALPHA


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--noise", default="0.01,0.02,0.04", help="window log-normal spreads")
    parser.add_argument("--slowdowns", default="0,3,5,10,20")
    args = parser.parse_args()
    print(
        "| window noise | true change | worse | unchanged | inconclusive | better "
        "| false worse per metric (tokens/s, J/token) | mean pairs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for window_sd in (float(x) for x in args.noise.split(",")):
        for slowdown in (float(x) for x in args.slowdowns.split(",")):
            tally = simulate(slowdown, args.sequences, seed=20261206, noise=Noise(window_sd=window_sd))
            per_metric = (
                ", ".join(f"{tally.rate(metric, 'worse'):.2%}" for metric, _ in GATED)
                if slowdown == 0
                else ""
            )
            print(
                f"| {window_sd:.0%} | {'identical' if slowdown == 0 else f'+{slowdown:g}%'} "
                f"| {tally.combined_rate('worse'):.1%} | {tally.combined_rate('unchanged'):.1%} "
                f"| {tally.combined_rate('inconclusive'):.1%} | {tally.combined_rate('better'):.1%} "
                f"| {per_metric} | {tally.mean_pairs:.1f} |"
            )
    print(f"\nalpha = {ALPHA}; {args.sequences} sequences per row, seed 20261206.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
