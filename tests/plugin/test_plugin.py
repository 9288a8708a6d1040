"""Plugin behaviour, driven through real pytest runs with pytester, as users see it."""

import json
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

FAST = [
    "--llem-baseline-s=0",
    "--llem-warmup=1",
    "--llem-repeats=2",
    "--llem-min-window-s=0",  # one pass per window: token counts below are of one pass
    "-p",
    "no:cacheprovider",
]
TINY_MARK = '@pytest.mark.llem(model="tiny", max_new_tokens=6, n_prompts=3)'


def _report(pytester: pytest.Pytester) -> dict[str, Any]:
    reports = sorted(pytester.path.glob(".llem/runs/*/report.json"))
    assert len(reports) == 1, reports
    report: dict[str, Any] = json.loads(reports[0].read_text())
    return report


def test_parametrised_experiments_are_measured_reported_and_summarised(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        @pytest.mark.parametrize("batch_size", [1, 3])
        def test_tiny(llem, batch_size):
            result = llem.run(batch_size=batch_size)
            assert result.output_tokens == 3 * 6
        """
    )
    result = pytester.runpytest("--llem-energy=auto", *FAST)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*pytest-llem*",
            "*test_tiny[[]1[]]*tiny*(estimated)*",
            "llem JSON report: *report.json",
            "llem Parquet table: *experiments.parquet",
        ]
    )
    report = _report(pytester)
    assert report["schema_version"] == 1 and report["created_at"]
    environment = report["environment"]
    assert environment["torch_version"] and environment["transformers_version"] and environment["python"]
    assert {"cpu_model", "gpus", "git_commit", "git_dirty"} <= set(environment)
    experiments = {e["nodeid"]: e for e in report["experiments"]}
    assert set(experiments) == {
        "test_parametrised_experiments_are_measured_reported_and_summarised.py::test_tiny[1]",
        "test_parametrised_experiments_are_measured_reported_and_summarised.py::test_tiny[3]",
    }
    for experiment in experiments.values():
        assert experiment["status"] == "passed" and experiment["test_outcome"] == "passed"
        assert experiment["output_tokens"] == 18 and experiment["tokens_per_second"] > 0
        assert experiment["energy"]["source"] == "estimate" and experiment["energy"]["measured"] is False
        assert "watts_per_busy_core" in experiment["energy"]["assumptions"]
        assert "energy_estimated" in [w["flag"] for w in experiment["warnings"]]
        assert len(experiment["repeats"]) == 2 and experiment["config"]["repeats"] == 2
        assert experiment["config"]["num_threads"] >= 1 and len(experiment["config_hash"]) == 16
        for key in (
            "input_tokens",
            "window_s",
            "prefill_s",
            "time_per_output_token_s",
            "energy_j",
            "energy_per_output_token_j",
            "flops",
            "warmup",
        ):
            assert experiment[key] is not None, key
    parquet = next(pytester.path.glob(".llem/runs/*/experiments.parquet"))
    import pyarrow.parquet as pq

    assert pq.read_table(parquet).num_rows == 2


def test_ini_twins_set_options_and_the_command_line_wins(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        llem_energy = none
        llem_repeats = 1
        llem_warmup = 0
        llem_baseline_s = 0
        llem_json = out/session.json
        """
    )
    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        def test_one(llem):
            llem.run()
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    experiment = json.loads((pytester.path / "out/session.json").read_text())["experiments"][0]
    assert experiment["energy"]["source"] == "none" and experiment["energy_j"] is None
    assert len(experiment["repeats"]) == 1
    assert (pytester.path / "out/experiments.parquet").is_file()
    pytester.runpytest(
        "-p", "no:cacheprovider", "--llem-repeats=2", "--llem-energy=estimate"
    ).assert_outcomes(passed=1)
    experiment = json.loads((pytester.path / "out/session.json").read_text())["experiments"][0]
    assert experiment["energy"]["source"] == "estimate" and len(experiment["repeats"]) == 2


def test_bad_settings_error_their_test_with_one_line_and_the_session_goes_on(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.llem(model="tiny", batch_size=0)
        def test_bad_marker(llem):
            llem.run()

        @pytest.mark.llem("tiny")
        def test_positional_marker(llem):
            pass

        {TINY_MARK}
        def test_bad_override(llem):
            llem.run(bogus=1)

        {TINY_MARK}
        def test_good(llem):
            llem.run()
        """
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=1, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "llem config from @pytest.mark.llem: batch_size=0 is invalid: Input should be greater than or equal to 1",
            "@pytest.mark.llem takes keyword arguments only*",
            "llem config from llem.run(): unknown key 'bogus' (value 1); allowed keys: model, *",
        ]
    )
    assert "Traceback" not in result.stdout.str() and "During handling" not in result.stdout.str()


def test_bad_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--llem-energy=gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*energy.meter='gpu' is invalid*"])


def test_unresolvable_model_errors_each_affected_test_once_and_is_recorded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llem(model="nobody/nothing")
        @pytest.mark.parametrize("n", [1, 2])
        def test_missing(llem, n):
            llem.run()
        """
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(errors=2)
    errors = [
        line
        for line in result.stdout.lines
        if line.startswith("pre-flight failed (1 problem(s)): model 'nobody")
    ]
    assert len(errors) == 2  # one error section per affected test, no traceback
    statuses = {e["status"] for e in _report(pytester)["experiments"]}
    assert statuses == {"error"}


def test_failed_experiment_is_recorded_with_its_reason_and_results_are_kept_whatever_the_test_asserts(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        SEEN = []

        def pytest_llem_experiment_result(item, result):
            SEEN.append((item.name, result.status))

        def pytest_sessionfinish(session):
            print("hook saw", sorted(SEEN))
        """
    )
    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        def test_broken_dataset(llem):
            llem.run(dataset="/no/such/prompts.jsonl")

        {TINY_MARK}
        def test_assertion_after_measuring(llem):
            llem.run()
            assert False, "the test's own check"
        """
    )
    result = pytester.runpytest("-s", *FAST)
    result.assert_outcomes(failed=2)
    # a missing dataset is found in pre-flight, before the model loads: status "error"
    result.stdout.fnmatch_lines(
        ["*pre-flight failed (1 problem(s)): dataset '/no/such/prompts.jsonl': file not found*"]
    )
    result.stdout.fnmatch_lines(
        ["*hook saw [[]('test_assertion_after_measuring', 'passed'), ('test_broken_dataset', 'error')[]]"]
    )
    experiments = {e["nodeid"].split("::")[1]: e for e in _report(pytester)["experiments"]}
    assert experiments["test_broken_dataset"]["status"] == "error"
    assert "file not found" in experiments["test_broken_dataset"]["error"]
    assert experiments["test_assertion_after_measuring"]["status"] == "passed"
    assert experiments["test_assertion_after_measuring"]["test_outcome"] == "failed"


def test_measure_wraps_the_users_own_inference_code(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.llem(energy="estimate")
        def test_own_code(llem, llem_environment, llem_meter):
            assert llem_meter.name == "estimate" and llem_environment.python
            with llem.measure(output_tokens=40, input_tokens=7) as handle:
                sum(i * i for i in range(300_000))
            result = handle.result
            assert result.output_tokens == 40 and result.input_tokens == 7
            assert result.energy.source == "estimate" and result.energy_j > 0
            assert result.tokens_per_second == pytest.approx(40 / result.window_s)
        """
    )
    pytester.runpytest(*FAST).assert_outcomes(passed=1)
    (experiment,) = _report(pytester)["experiments"]
    assert experiment["output_tokens"] == 40 and experiment["config"]["repeats"] == 1


def test_one_xdist_worker_runs_experiments_and_the_controller_stores_them(pytester: pytest.Pytester) -> None:
    # several workers: tests/plugin/test_xdist.py
    pytest.importorskip("xdist")
    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        def test_one(llem):
            llem.run()

        def test_plain():
            pass
        """
    )
    single = pytester.runpytest_subprocess("-n", "1", *FAST)
    single.assert_outcomes(passed=2)
    reports = sorted(pytester.path.glob(".llem/runs/*/report.json"), key=lambda p: p.stat().st_mtime)
    experiments = json.loads(reports[-1].read_text())["experiments"]
    assert [e["status"] for e in experiments] == ["passed"]
    assert experiments[0]["slot"]["worker"] == "gw0" and experiments[0]["slot"]["concurrent_experiments"] == 1


def test_pytest_benchmark_extra_info_carries_llem_figures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the inner session is no xdist worker, even when this suite runs under -n: pytest-benchmark
    # would otherwise switch itself off there
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytest.importorskip("pytest_benchmark")
    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        def test_both(llem, benchmark):
            result = benchmark.pedantic(llem.run, rounds=1, iterations=1)
            assert result.status == "passed"
        """
    )
    pytester.runpytest("--benchmark-json=bench.json", *FAST).assert_outcomes(passed=1)
    data = json.loads((pytester.path / "bench.json").read_text())
    extra = data["benchmarks"][0]["extra_info"]
    assert extra["llem_energy_source"] == "estimate" and extra["llem_tokens_per_second"] > 0
    assert data["llem"][0]["llem_output_tokens"] == 18


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.llem(**settings): experiment settings for this test*"])


def test_help_documents_every_option_once(pytester: pytest.Pytester) -> None:
    from pytest_llem.plugin.options import OPTIONS

    result = pytester.runpytest("--help")
    text = result.stdout.str()
    for option in OPTIONS:
        assert text.count(option.flag) >= 1, option.flag
        assert f"{option.ini} (" in text, option.ini


def test_an_interrupted_session_keeps_what_it_measured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        def test_first(llem):
            llem.run()

        def test_interrupt():
            raise KeyboardInterrupt

        {TINY_MARK}
        def test_never(llem):
            llem.run()
        """
    )
    result = pytester.runpytest_subprocess(*FAST)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = _report(pytester)
    assert [e["nodeid"].split("::")[1] for e in report["experiments"]] == ["test_first"]
    assert not list(Path(pytester.path).glob(".llem/runs/*/.report.json.*"))  # no temporary files left


def test_an_explicitly_named_unavailable_meter_fails_pre_flight_with_guidance(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLEM_POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        def test_one(llem):
            llem.run()
        """
    )
    result = pytester.runpytest("--llem-energy=rapl", *FAST)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["pre-flight failed (1 problem(s)): energy meter 'rapl' is not available: no RAPL zones under*Fix: *"]
    )


def test_llem_show_and_merge(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_llem.cli.commands import main as llem_main

    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        def test_one(llem):
            llem.run()
        """
    )
    pytester.runpytest("--llem-save=a", *FAST).assert_outcomes(passed=1)
    second = pytester.makepyfile(
        test_second=f"import pytest\n\n{TINY_MARK}\ndef test_two(llem):\n    llem.run()\n"
    )
    pytester.runpytest(str(second), "--llem-save=b", *FAST).assert_outcomes(passed=1)  # merge: other tests
    llem_dir = str(pytester.path / ".llem")
    capsys.readouterr()
    assert llem_main(["--dir", llem_dir, "show", "a"]) == 0
    assert "(estimated)" in capsys.readouterr().out
    merged = pytester.path / "merged.json"
    assert llem_main(["--dir", llem_dir, "merge", "a", "b", "-o", str(merged)]) == 0
    assert len(json.loads(merged.read_text())["experiments"]) == 2
    assert llem_main(["--dir", llem_dir, "compare", "a", "nonexistent"]) == 2


def test_recorded_figures_reach_the_report_summary_and_junit_and_never_fail(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_overhead(llem):
            llem.record_figure("ratio", 0.9, at_least=0.97, detail="40 pairs")
            llem.run(model="tiny", device="cpu", n_prompts=1, max_new_tokens=2, repeats=1,
                     warmup={"n_warmup": 0}, energy={"meter": "none"})
        """
    )
    result = pytester.runpytest("--llem-json=out/report.json", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*figure test_overhead: ratio = 0.9 (target >= 0.97: NOT met; recorded, not asserted) - 40 pairs*"]
    )
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert [(f["name"], f["value"], f["target"], f["target_met"]) for f in report["figures"]] == [
        ("ratio", 0.9, ">= 0.97", False)
    ]
    assert 'name="llem_figure"' in (pytester.path / "junit.xml").read_text()


def test_the_readme_assertion_holds_whatever_passes_the_window_calibration_picks(
    pytester: pytest.Pytester,
) -> None:
    """`result.output_tokens == n_prompts * max_new_tokens` is one pass over the prompts, so a
    window calibrated to hold many passes cannot break it; the window's total has its own name."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llem(model="tiny", n_prompts=2, max_new_tokens=4, repeats=1, warmup=1)
        def test_first(llem):
            result = llem.run()
            assert result.window_passes > 1
            assert result.output_tokens == 2 * 4
            assert result.window_output_tokens == 2 * 4 * result.window_passes
        """
    )
    # the last one given wins; 3 s is ten times the slowest pass of this tiny workload seen on a
    # busy 2-core machine (0.35 s), so a window holds several passes however the machine is doing
    result = pytester.runpytest(*FAST, "--llem-min-window-s=3")
    result.assert_outcomes(passed=1)
    experiment = _report(pytester)["experiments"][0]
    assert experiment["output_tokens"] == 8 and experiment["window_passes"] > 1
    assert "output_tokens_mismatch" not in [w["flag"] for w in experiment["warnings"]]


def test_the_summary_and_html_show_the_tests_outcome_where_it_differs_from_the_experiments(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        {TINY_MARK}
        def test_asserts_too_much(llem):
            llem.run()
            assert False, "the test's own check"
        """
    )
    result = pytester.runpytest(*FAST, "--llem-html=report.html")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_asserts_too*passed, test*", "*failed*"])  # the cells fold
    html = (pytester.path / "report.html").read_text()
    assert '<span class="badge fail">test failed</span>' in html
