"""What the plugin costs pytest's start-up: `pytest --collect-only` on a file of 50 llem tests,
with the plugin and with `-p no:llem`, in alternating pairs (so the machine's drift hits both
alike). Collection runs no experiment, so the goal is that the plugin adds almost nothing
(+0.05 s): the measurement core loads with the first experiment. Recorded, never asserted.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from pytest_llem.plugin.fixture import LlemFixture

PAIRS = 8
TESTS = 50


def _collect(directory: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *extra,
            "test_many.py",
        ],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return time.perf_counter() - start


def test_collecting_llem_tests_costs_little_more_than_without_the_plugin(
    llem: LlemFixture, tmp_path: Path
) -> None:
    body = ["import pytest", ""]
    for k in range(TESTS):
        body += [
            '@pytest.mark.llem(model="tiny", n_prompts=1, max_new_tokens=2)',
            f"def test_{k}(llem):",
            "    llem.run()",
            "",
        ]
    (tmp_path / "test_many.py").write_text("\n".join(body))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # its own rootdir: this suite's settings stay out
    _collect(tmp_path)  # warm the file cache once
    differences, with_plugin, without = [], [], []
    for pair in range(PAIRS):
        order = ((), ("-p", "no:llem")) if pair % 2 == 0 else (("-p", "no:llem"), ())
        timings = {extra: _collect(tmp_path, *extra) for extra in order}
        with_plugin.append(timings[()])
        without.append(timings[("-p", "no:llem")])
        differences.append(timings[()] - timings[("-p", "no:llem")])
    llem.record_figure(
        "collection cost of the plugin (50 llem tests)",
        statistics.median(differences),
        unit="s",
        at_most=0.05,
        detail=(
            f"median of {PAIRS} alternating pairs; with the plugin {statistics.median(with_plugin):.2f} s, "
            f"without {statistics.median(without):.2f} s"
        ),
    )
