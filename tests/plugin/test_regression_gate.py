"""The CI regression gate through real pytest runs.

The benchmark uses a local checkpoint directory, as a project's own model would be; the
"pull request" rebuilds it with more transformer blocks, so the experiment config and its
hash stay the same while the work grows.
"""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from factories import energy_info, make_repeat, make_result

from pytest_llem.cli.commands import main as llem_main
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


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # one pass per window: these tests pin the gate's mechanics on windows they size themselves
    return pytester.runpytest("-p", "no:cacheprovider", "--llem-min-window-s=0", *args)


def test_a_real_slowdown_fails_its_test_with_a_readable_message_and_junit_properties(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_runs_with_a_different_config_are_not_comparable(pytester: pytest.Pytester) -> None:
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


def _stored(directory: Path, energies: list[float], nodeid: str = "t.py::test_a") -> str:
    from pytest_llem.schema.config import ExperimentConfig
    from pytest_llem.schema.environment import EnvironmentSnapshot
    from pytest_llem.schema.results import SessionReport
    from pytest_llem.store.report import write_report

    repeats = [
        make_repeat(i, tokens_per_second=100.0 + i % 2, energy_per_output_token_j=joules)
        for i, joules in enumerate(energies)
    ]
    result = make_result(
        nodeid,
        config=ExperimentConfig(model="tiny", num_threads=1),
        output_tokens=100,
        energy=energy_info(),
        repeats=repeats,
    )
    environment = EnvironmentSnapshot(python="3", platform="linux", tool_version="0")
    report = SessionReport(
        tool_version="0", created_at="now", fingerprint="fp", environment=environment, experiments=[result]
    )
    path = directory / "report.json"
    directory.mkdir()
    write_report(report, path)
    return str(path)


def test_table_markdown_json_and_exit_code_agree_on_an_inconclusive_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's "+10%, interval straddling the threshold" case: inconclusive everywhere,
    exit 0, and exit 1 only with --fail-on-inconclusive."""
    base = _stored(tmp_path / "base", [0.200, 0.190, 0.210, 0.200])
    head = _stored(tmp_path / "head", [0.221, 0.208, 0.232, 0.219])
    rule = ["--fail-on", "energy_per_output_token_j:5"]
    capsys.readouterr()
    assert llem_main(["--dir", str(tmp_path), "compare", base, head, *rule, "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)[0]
    assert found["verdict"] == "inconclusive"
    energy = next(m for m in found["metrics"] if m["metric"] == "energy_per_output_token_j")
    assert energy["verdict"] == "inconclusive" and energy["repeats_needed"] > 4
    assert next(m for m in found["metrics"] if m["metric"] == "tokens_per_second")["verdict"] == "info"
    assert llem_main(["--dir", str(tmp_path), "compare", base, head, *rule, "--markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "**1 inconclusive**" in markdown and "J/token (estimated)" in markdown
    assert llem_main(["--dir", str(tmp_path), "compare", base, head, *rule]) == 0
    assert "inconclusive (~" in capsys.readouterr().out
    strict = ["compare", base, head, *rule, "--fail-on-inconclusive"]
    assert llem_main(["--dir", str(tmp_path), *strict]) == 1
    assert "(inconclusive)" in capsys.readouterr().err


MEASURE = """
import pytest

calls = []

@pytest.mark.llem(repeats=4, warmup=2, energy={"meter": "estimate", "baseline_s": 0})
def test_my_inference_code(llem):
    result = llem.measure(lambda: calls.append(1), output_tokens=10)
    assert len(calls) == 2 + 4  # warmup calls, then one call per window
    assert len(result.repeats) == 4 and result.repeats[0].output_tokens == 10
    assert result.stats["tokens_per_second"].n == 4
"""


def test_measure_repeats_your_own_code_as_one_experiment(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mine=MEASURE)
    result = _run(pytester, "--llem-json=r.json")
    result.assert_outcomes(passed=1)
    experiments = json.loads((pytester.path / "r.json").read_text())["experiments"]
    assert len(experiments) == 1 and len(experiments[0]["repeats"]) == 4
    # what ran was the test's code: no engine (or its version) is claimed for it
    assert experiments[0]["engine"] == "llem.measure" and experiments[0]["engine_version"] is None
    result.stdout.fnmatch_lines(["*test_my_inference_c*llem.measure*"])  # the summary table says so too


SIMULATED_CONFTEST = """
from pytest_llem.testing import SimulatedGpu, simulated_gpus

def pytest_configure(config):
    simulation = simulated_gpus([SimulatedGpu(counter_period_s=0.0)])
    simulation.__enter__()
    config.add_cleanup(lambda: simulation.__exit__(None, None, None))
"""

BENCHMARKED = """
import pytest

@pytest.mark.llem(engine="simulated", model="sim", device="cuda:0", n_prompts=2, max_new_tokens=4,
                  repeats=3, warmup={"n_warmup": 1, "thermal_floor_s": 0},
                  energy={"meter": "nvml", "baseline_s": 0, "sampler": False})
def test_rounds(llem, benchmark):
    benchmark.pedantic(llem.run, rounds=4, iterations=1)

@pytest.mark.llem(engine="simulated", model="sim", device="cuda:0", n_prompts=2, max_new_tokens=4,
                  warmup={"n_warmup": 1, "thermal_floor_s": 0},
                  energy={"meter": "nvml", "baseline_s": 0, "sampler": False})
def test_auto(llem, benchmark):
    benchmark(llem.run)
"""


def test_benchmark_llem_run_records_one_experiment_whose_repeats_are_the_rounds(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the inner session is no xdist worker, even when this suite runs under -n: pytest-benchmark
    # would otherwise switch itself off there
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makeconftest(SIMULATED_CONFTEST)
    pytester.makepyfile(test_bench=BENCHMARKED)
    result = _run(pytester, "--llem-json=r.json", "--benchmark-max-time=0.01")
    result.assert_outcomes(passed=2)
    experiments = {e["nodeid"]: e for e in json.loads((pytester.path / "r.json").read_text())["experiments"]}
    assert len(experiments) == 2  # one per test, not one per call
    rounds = experiments["test_bench.py::test_rounds"]
    assert len(rounds["repeats"]) == 4 and rounds["config"]["repeats"] == 4
    assert [r["index"] for r in rounds["repeats"]] == [0, 1, 2, 3]
    assert rounds["stats"]["tokens_per_second"]["n"] == 4
    auto = experiments["test_bench.py::test_auto"]
    assert len(auto["repeats"]) >= 2 and auto["config"]["repeats"] == len(auto["repeats"])


def test_the_pr_comment_rounds_to_what_the_interval_supports() -> None:
    from pytest_llem.render.comment import render_comment
    from pytest_llem.schema.comparison import ExperimentComparison, MetricComparison, Verdict

    def metric(
        name: str,
        base: float,
        head: float,
        ratio: float,
        low: float,
        high: float,
        verdict: Verdict,
        needed: int | None = None,
    ) -> MetricComparison:
        # the change is the paired estimate, not the ratio of the window medians
        return MetricComparison(
            metric=name,
            base_mean=base,
            head_mean=head,
            statistic="paired",
            base_value=base,
            head_value=head,
            change_pct=(ratio - 1) * 100,
            ratio=ratio,
            ratio_ci95_low=low,
            ratio_ci95_high=high,
            p_value=0.004,
            test="median confidence sequence (Howard & Ramdas 2022)",
            n_base=12,
            n_head=12,
            n_pairs=12,
            threshold_pct=5.0,
            verdict=verdict,
            repeats_needed=needed,
        )

    comparison = ExperimentComparison(
        nodeid="b.py::test_gen",
        config_hash="x",
        verdict="worse",
        mode="ab",
        config_changes=["dtype: 'float32' -> 'bfloat16'"],
        energy_estimated=True,
        metrics=[
            metric("energy_per_output_token_j", 0.201234, 0.221357, 1.10, 1.069, 1.131, "worse"),
            metric("tokens_per_second", 100.1234, 99.71, 0.9994, 0.9987, 1.0011, "unchanged"),
        ],
    )
    comment = render_comment([comparison], "A/B")
    assert "**1 worse**" in comment
    # +-3% known: whole percent and three significant digits
    assert (
        "+10%, CI +7…+13% **worse after 12 pairs**; window medians 0.201 → 0.221 J/token (estimated)"
        in comment
    )
    # +-0.12% known: one decimal, four significant digits; the medians' own ratio (-0.4%) is
    # not shown as the change
    assert "-0.1%, CI -0.1…+0.1% unchanged after 12 pairs; window medians 100.1 → 99.71 tokens/s" in comment
    assert "| dtype: 'float32' -> 'bfloat16' |" in comment
    # +-10% known: two significant digits, written out ("160", never "1.6e+02"); the budget spent
    wide = comparison.model_copy(
        update={
            "stopped_because": "max pairs",
            "metrics": [metric("tokens_per_second", 156.3, 159.4, 1.02, 0.94, 1.15, "inconclusive", 40)],
        }
    )
    assert (
        "+2%, CI -6…+15% inconclusive after 12 pairs (max pairs), ~28 more would likely settle it; "
        "window medians 160 → 160 tokens/s"
    ) in render_comment([wide], "A/B")


STORED_CONFTEST = """
from pytest_llem.testing import SimulatedGpu, simulated_gpus

def pytest_configure(config):
    simulation = simulated_gpus([SimulatedGpu(power_w=200.0, counter_period_s=0.0)])
    simulation.__enter__()
    config.add_cleanup(lambda: simulation.__exit__(None, None, None))
"""

STORED_BENCH = """
import pytest
from pytest_llem.testing import active_simulation

WINDOWS = {windows!r}  # seconds per window on the simulated clock, one per repeat (>= 1 s: valid)

@pytest.mark.llem(engine="simulated", model="sim", device="cuda:0", repeats=4,
                  warmup={{"n_warmup": 0, "thermal_floor_s": 0}},
                  energy={{"meter": "nvml", "baseline_s": 0, "sampler": False}})
def test_my_inference_code(llem):
    durations = iter(WINDOWS)
    llem.measure(lambda: active_simulation().clock.advance(next(durations)), output_tokens=100)
"""


def test_a_stored_baseline_gate_that_straddles_its_threshold_is_inconclusive_everywhere(
    pytester: pytest.Pytester,
) -> None:
    """The issue's "+10%, interval straddling the threshold" case through `--llem-compare` in a
    pytest session: the table, the Markdown, the JSON report and JUnit say "inconclusive" and
    the exit code is 0; `--llem-fail-on-inconclusive` fails the test instead."""
    pytester.makeconftest(STORED_CONFTEST)
    pytester.makepyfile(test_mine=STORED_BENCH.format(windows=[2.00, 1.90, 2.10, 2.00]))
    _run(pytester, "--llem-save=base").assert_outcomes(passed=1)
    pytester.makepyfile(test_mine=STORED_BENCH.format(windows=[2.21, 2.08, 2.32, 2.19]))
    gated = ("--llem-compare=base", "--llem-fail-on=energy_per_output_token_j:5")
    outputs = ("--llem-json=head.json", "--llem-markdown=comment.md", "--junitxml=junit.xml")
    result = _run(pytester, *gated, *outputs)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["*llem gate: 1 inconclusive*", "*energy_per_output_token_j*inconclusive (~*"]
    )
    report = json.loads((pytester.path / "head.json").read_text())
    comparison = report["experiments"][0]["comparison"]
    energy = next(m for m in comparison["metrics"] if m["metric"] == "energy_per_output_token_j")
    assert comparison["verdict"] == energy["verdict"] == "inconclusive"
    assert energy["ratio_ci95_low"] < 1.05 < energy["ratio_ci95_high"] and energy["repeats_needed"] > 4
    assert report["gate"] == {
        "mode": "stored",
        "reference": report["gate"]["reference"],
        "base_commit": None,
        "headline": "1 inconclusive",
        "missing": [],
    }
    assert "**1 inconclusive**" in (pytester.path / "comment.md").read_text()
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="llem_verdict" value="inconclusive"' in junit
    strict = _run(pytester, *gated, "--llem-fail-on-inconclusive")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*inconclusive*"])
