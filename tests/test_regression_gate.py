"""The CI regression gate through real pytest runs.

The benchmark uses a local checkpoint directory, as a project's own model would be; the
"pull request" rebuilds it with more transformer blocks, so the experiment config and its
hash stay the same while the work grows.
"""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from pytest_llem.cli import main as llem_main
from pytest_llem.testing.checkpoints import build_block_model

pytest_plugins = ["pytester"]

BENCHMARK = """
import pytest

@pytest.mark.llem(model="{model}", max_new_tokens=16, n_prompts=4, batch_size=4, repeats=6, warmup=2,
                  num_threads=1, energy={{"meter": "estimate", "baseline_s": 0}})
def test_block_stack(llem):
    llem.run()
"""


def build_model(directory: Path, layers: int) -> None:
    build_block_model(directory, layers, width=256)


def _run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_a_real_slowdown_fails_its_test_with_a_readable_message_and_junit_properties(pytester, capsys):
    """Mechanics of the gate with an unmistakable slowdown (2 -> 8 blocks). The statistical
    question - 5 identical pairs vs +20% work on this noisy machine - is answered by the
    benchmark benchmarks/gate/run_gate_demo.py, whose figures the README quotes."""
    model = pytester.path / "model"
    build_model(model, layers=2)
    pytester.makepyfile(test_bench=BENCHMARK.format(model=model))
    _run(pytester, "--llem-save=base").assert_outcomes(passed=1)

    build_model(model, layers=8)  # the pull request: same config, much more work
    result = _run(pytester, "--llem-save=slow", "--llem-compare=base", "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*llem regression: *% (limit 5%, p=* welch-t, ratio 95% CI *)*"])
    assert "Traceback" not in result.stdout.str()
    report = json.loads((pytester.path / ".llem/runs/slow/report.json").read_text())
    comparison = report["experiments"][0]["comparison"]
    assert comparison["verdict"] == "worse" and report["experiments"][0]["test_outcome"] == "failed"
    worse = [m for m in comparison["metrics"] if m["verdict"] == "worse"]
    assert worse and all(m["p_value"] < 0.05 for m in worse)
    properties = {
        p.get("name"): p.get("value") for p in ET.parse(pytester.path / "junit.xml").iter("property")
    }
    assert properties["llem_verdict"] == "worse"
    assert "llem_energy_per_output_token_j_p_value" in properties

    llem_dir = str(pytester.path / ".llem")
    capsys.readouterr()
    assert llem_main(["--dir", llem_dir, "compare", "base", "slow", "--markdown"]) == 1
    assert "| `test_bench.py::test_block_stack` |" in capsys.readouterr().out
    assert llem_main(["--dir", llem_dir, "compare", "base", "base"]) == 0
    gab = pytester.path / "gab.json"
    assert (
        llem_main(
            [
                "--dir",
                llem_dir,
                "compare",
                "base",
                "slow",
                "--format",
                "github-action-benchmark",
                "-o",
                str(gab),
            ]
        )
        == 1
    )
    assert json.loads(gab.read_text())[0]["unit"] == "J/token"
    capsys.readouterr()
    assert llem_main(["--dir", llem_dir, "list"]) == 0
    listing = capsys.readouterr().out
    assert "base" in listing and "slow" in listing


def test_runs_with_a_different_config_are_not_comparable(pytester):
    model = pytester.path / "model"
    build_model(model, layers=1)
    pytester.makepyfile(test_bench=BENCHMARK.format(model=model).replace("repeats=6", "repeats=2"))
    _run(pytester, "--llem-save=base").assert_outcomes(passed=1)
    result = _run(pytester, "--llem-save=head", "--llem-compare=base", "--llem-watts-per-core=5")
    result.assert_outcomes(passed=1)
    comparison = json.loads((pytester.path / ".llem/runs/head/report.json").read_text())["experiments"][0][
        "comparison"
    ]
    assert comparison["verdict"] == "not comparable"
    assert "different configs" in comparison["reason"]
