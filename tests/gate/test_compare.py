"""Statistics and verdicts between two runs."""

import json
import random
import warnings
from collections.abc import Sequence

import pytest
from factories import energy_info, make_repeat, make_result
from scipy import stats

from pytest_llem.gate.compare import (
    DEFAULT_RULES,
    FailRule,
    compare_experiment,
    compare_reports,
    significance,
)
from pytest_llem.measure.statistics import summarise
from pytest_llem.render.comparison import github_action_benchmark, to_markdown
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.results import ExperimentResult, SessionReport


def _result(
    tps_values: Sequence[float],
    joules_per_token: Sequence[float],
    nodeid: str = "t::a",
    config: ExperimentConfig | None = None,
    source: str = "estimate",
) -> ExperimentResult:
    config = config or ExperimentConfig(model="tiny", num_threads=2)
    repeats = [
        make_repeat(
            i,
            tokens_per_second=tps,
            energy_per_output_token_j=jpt,
            window_s=100 / tps,
            time_per_output_token_s=1 / tps,
        )
        for i, (tps, jpt) in enumerate(zip(tps_values, joules_per_token, strict=True))
    ]
    return make_result(
        nodeid,
        config=config,
        output_tokens=100,
        tokens_per_second=sum(tps_values) / len(tps_values),
        time_per_output_token_s=0.01,
        energy_per_output_token_j=sum(joules_per_token) / len(joules_per_token),
        energy=energy_info(source),
        repeats=repeats,
        stats={"energy_per_output_token_j": summarise(joules_per_token)},
    )


def _noisy(mean: float, n: int, seed: int, cv: float = 0.02) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, mean * cv) for _ in range(n)]


def test_summary_statistics() -> None:
    stats = summarise([1.0, 2.0, 3.0])
    assert stats.mean == 2.0 and stats.std == 1.0 and stats.cv == 0.5
    assert stats.ci95_low == pytest.approx(2.0 - 4.302652729749464 / 3**0.5)
    assert summarise([5.0]).ci95_low is None


def test_identical_distributions_are_unchanged() -> None:
    base = _result(_noisy(100, 5, 1), _noisy(0.2, 5, 2))
    head = _result(_noisy(100, 5, 3), _noisy(0.2, 5, 4))
    comparison = compare_experiment(base, head)
    assert comparison.verdict == "unchanged"
    assert {m.metric for m in comparison.metrics} == {"energy_per_output_token_j", "tokens_per_second"}


def test_twenty_percent_more_work_is_a_significant_regression() -> None:
    base = _result(_noisy(100, 5, 1), _noisy(0.2, 5, 2))
    head = _result(_noisy(100 / 1.2, 5, 3), _noisy(0.24, 5, 4))
    comparison = compare_experiment(base, head)
    assert comparison.verdict == "worse"
    energy = next(m for m in comparison.metrics if m.metric == "energy_per_output_token_j")
    assert (
        energy.p_value is not None
        and energy.ratio_ci95_low is not None
        and energy.ratio_ci95_high is not None
    )
    assert (
        energy.change_pct == pytest.approx(20, abs=3) and energy.p_value < 0.05 and energy.test == "welch-t"
    )
    assert energy.ratio_ci95_low < energy.ratio < energy.ratio_ci95_high


def test_a_large_change_that_is_not_significant_is_inconclusive_not_unchanged() -> None:
    base = _result([100, 100], [0.1, 0.3])
    head = _result([100, 100], [0.12, 0.36])
    comparison = compare_experiment(base, head)
    energy = next(m for m in comparison.metrics if m.metric == "energy_per_output_token_j")
    assert energy.p_value is not None
    assert energy.change_pct == pytest.approx(20) and energy.p_value > 0.05
    assert energy.verdict == "inconclusive" and comparison.verdict == "inconclusive"
    assert not comparison.fails() and comparison.fails(fail_on_inconclusive=True)


def test_an_interval_straddling_the_threshold_is_inconclusive_with_repeats_to_settle_it() -> None:
    # about +10% with the interval reaching below +5%: neither worse nor unchanged
    base = _result([100.0] * 4, [0.200, 0.190, 0.210, 0.200])
    head = _result([100.0] * 4, [0.221, 0.208, 0.232, 0.219])
    energy = next(
        m
        for m in compare_experiment(base, head, [FailRule("energy_per_output_token_j", 5)]).metrics
        if m.metric == "energy_per_output_token_j"
    )
    assert (
        energy.p_value is not None
        and energy.ratio_ci95_low is not None
        and energy.ratio_ci95_high is not None
    )
    assert energy.p_value < 0.05 and energy.ratio_ci95_low < 1.05 < energy.ratio_ci95_high
    assert energy.repeats_needed is not None
    assert energy.verdict == "inconclusive" and energy.repeats_needed > 4


def test_ungated_metrics_are_information_not_worse() -> None:
    base = _result([100.0, 101.0, 99.0, 100.0, 100.5], [0.2] * 5)
    head = _result([50.0, 51.0, 49.0, 50.0, 50.5], [0.2] * 5)  # throughput halved, ungated
    comparison = compare_experiment(base, head, [FailRule("energy_per_output_token_j", 5)])
    throughput = next(m for m in comparison.metrics if m.metric == "tokens_per_second")
    assert throughput.verdict == "info" and comparison.verdict == "unchanged"


def test_value_columns_hold_the_statistic_the_change_is_built_from() -> None:
    base = _result(_noisy(100, 10, 1), [0.1] * 9 + [1.0])  # one burst: mean and median differ
    head = _result(_noisy(100, 10, 2), [0.1] * 10)
    energy = next(
        m for m in compare_experiment(base, head).metrics if m.metric == "energy_per_output_token_j"
    )
    assert energy.statistic == "median" and energy.base_value == pytest.approx(0.1)
    assert energy.head_value is not None and energy.base_value is not None
    assert energy.change_pct == pytest.approx((energy.head_value / energy.base_value - 1) * 100)


def test_small_significant_change_under_the_threshold_is_not_a_regression() -> None:
    base = _result([100.0] * 5, [0.200, 0.2001, 0.1999, 0.2, 0.2])
    head = _result([100.0] * 5, [0.204, 0.2041, 0.2039, 0.204, 0.204])
    comparison = compare_experiment(base, head, [FailRule("energy_per_output_token_j", 5)])
    assert comparison.verdict == "unchanged"


def test_rank_test_is_used_with_many_repeats() -> None:
    p_value, test = significance(_noisy(1, 10, 1), _noisy(1.3, 10, 2))
    assert p_value is not None
    assert test == "mann-whitney-u" and p_value < 0.01


def test_different_configs_machines_and_meters_are_not_comparable() -> None:
    base = _result([100] * 3, [0.2] * 3)
    other_config = _result(
        [100] * 3, [0.2] * 3, config=ExperimentConfig(model="tiny", batch_size=4, num_threads=2)
    )
    assert "different configs" in compare_experiment(base, other_config).reason
    assert "different machines" in compare_experiment(base, base, DEFAULT_RULES, "aaa", "bbb").reason
    other_meter = _result([100] * 3, [0.2] * 3, source="rapl")
    verdict = compare_experiment(base, other_meter)
    assert verdict.verdict == "not comparable" and "different energy meters" in verdict.reason


def _report(experiments: list[ExperimentResult], fingerprint: str = "fp") -> SessionReport:
    environment = EnvironmentSnapshot(python="3", platform="linux", tool_version="0")
    return SessionReport(
        tool_version="0",
        created_at="now",
        fingerprint=fingerprint,
        environment=environment,
        experiments=experiments,
    )


def test_reports_match_by_test_id_and_flag_new_and_missing() -> None:
    base = _report([_result([100] * 3, [0.2] * 3, "t::a"), _result([100] * 3, [0.2] * 3, "t::gone")])
    head = _report([_result([100] * 3, [0.2] * 3, "t::a"), _result([100] * 3, [0.2] * 3, "t::new")])
    verdicts = {c.nodeid: c.verdict for c in compare_reports(base, head)}
    assert verdicts == {"t::a": "unchanged", "t::new": "new", "t::gone": "missing"}
    markdown = to_markdown(compare_reports(base, head))
    assert "**1 unchanged, 1 new, 1 missing**" in markdown
    # an exact ratio: as many digits as an estimate carries (3), trailing zeros kept
    assert "| `t::a` | unchanged | 0.200 → 0.200 J/token (estimated)" in markdown


def test_github_action_benchmark_entries_are_smaller_is_better() -> None:
    entries = github_action_benchmark(_report([_result([100] * 3, [0.2, 0.21, 0.19])]))
    names = [e["name"] for e in entries]
    assert names == ["t::a [energy_per_output_token_j]", "t::a [time_per_output_token_s]"]
    spread = entries[0]["range"]
    assert entries[0]["unit"] == "J/token" and isinstance(spread, str) and spread.startswith("± ")
    json.dumps(entries)


@pytest.mark.parametrize("text", ["bogus:5", "tokens_per_second", "tokens_per_second:-1"])
def test_bad_fail_on_rules_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="--llem-fail-on"):
        FailRule.parse(text)


def _with_reference(result: ExperimentResult, relative: Sequence[float]) -> ExperimentResult:
    for repeat, value in zip(result.repeats, relative, strict=True):
        repeat.reference_window_s = repeat.window_s / value
        repeat.relative_time = value
        repeat.relative_energy = value
    return result


def test_a_reference_model_cancels_machine_drift_in_the_gate() -> None:
    # the whole machine got 15% slower between the runs: raw figures moved, the ratios did not
    base = _with_reference(_result(_noisy(100, 6, 1), _noisy(0.2, 6, 2)), _noisy(1.0, 6, 3))
    drifted = _with_reference(_result(_noisy(85, 6, 4), _noisy(0.235, 6, 5)), _noisy(1.0, 6, 6))
    comparison = compare_experiment(base, drifted)
    gated = {m.metric: m.verdict for m in comparison.metrics if m.threshold_pct is not None}
    assert gated == {"relative_energy": "unchanged", "relative_time": "unchanged"}
    assert comparison.verdict == "unchanged"
    # the code got 20% slower relative to the untouched reference: a regression
    slower = _with_reference(_result(_noisy(83, 6, 7), _noisy(0.24, 6, 8)), _noisy(1.2, 6, 9))
    assert compare_experiment(base, slower).verdict == "worse"


def test_repeats_that_differ_by_rounding_are_constant_for_the_test() -> None:
    # a simulated board's identical windows, summed in different orders: scipy's t-test would
    # warn of catastrophic cancellation and test noise in the last bits
    base = [0.1 + 0.2, 0.3, 0.3 + 1e-17, 0.30000000000000004]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert significance(base, list(reversed(base))) == (1.0, "exact (no variance)")
        assert significance(base, [2 * v for v in base]) == (0.0, "exact (no variance)")
        p_value, test = significance(base, [0.3, 0.31, 0.29, 0.305])  # a spread on one side
    assert test == "welch-t" and p_value is not None and 0.5 < p_value < 1


@pytest.mark.parametrize("seed", range(5))
def test_the_welch_test_is_scipys(seed: int) -> None:
    rng = random.Random(seed)
    base = [rng.gauss(1.0, 0.05) for _ in range(rng.randint(2, 7))]
    head = [rng.gauss(1.03, 0.02) for _ in range(rng.randint(2, 7))]
    p_value, test = significance(base, head)
    assert test == "welch-t"
    assert p_value == pytest.approx(float(stats.ttest_ind(head, base, equal_var=False).pvalue), rel=1e-9)
