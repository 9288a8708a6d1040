"""Comparing two runs: matched experiments, statistics, and honest verdicts.

Verdicts (pytest_llem.gate.verdicts.verdict, shared with A/B mode): "worse"/"better" only when the
change is significant (p < 0.05) and the whole 95% interval of the ratio head/base lies beyond
the METRIC:PCT threshold; "unchanged" only when the whole interval lies within +-PCT;
otherwise "inconclusive", with the number of repeats that would likely settle it. Metrics
without a rule are shown as "info", never as worse or better.

Stored-baseline mode compares two independent sets of windows; two regimes, chosen by the
number of repeats and recorded with every comparison:
- fewer than 8 repeats on a side: Welch's t-test; the ratio of means with a 95% interval from
  the delta method on the log scale (Welch-Satterthwaite degrees of freedom). Value columns
  show means.
- 8 or more: Mann-Whitney U; the ratio of medians with a seeded bootstrap 95% interval
  (shared machines slow down in bursts, which medians and ranks ignore). Value columns show
  medians, so the change column always agrees with them.

A/B mode (`compare_paired`) pairs each head window with the adjacent base window of the same
job and uses the per-pair ratios: drift cancels pair by pair. Their median has an anytime-valid
confidence sequence (pytest_llem.gate.sequential), so the head adds pairs until every gated
verdict has settled (`judge_pairs`) without inflating false alarms.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llem.gate.gated_metrics import GATED_METRICS, parse_fail_on
from pytest_llem.gate.sequential import METHOD, pairs_to_settle, sequence_of, sequential_verdict
from pytest_llem.gate.verdicts import combine, pair_ratios, repeats_to_settle, verdict
from pytest_llem.schema.comparison import ExperimentComparison, MetricComparison, Statistic, Verdict
from pytest_llem.schema.results import ExperimentResult, SessionReport

ALPHA = 0.05
RANK_TEST_MIN_N = 8
# Read from the one registry of gated metrics (pytest_llem.gate.gated_metrics).
LOWER_IS_BETTER = {name: metric.lower_is_better for name, metric in GATED_METRICS.items()}
UNITS = {name: metric.unit for name, metric in GATED_METRICS.items()}


@dataclass(frozen=True)
class FailRule:
    metric: str
    pct: float

    @classmethod
    def parse(cls, text: str, option: str = "--llem-fail-on") -> FailRule:
        """A rule from METRIC:PCT: a gated metric and a finite threshold > 0 (else ValueError)."""
        return cls(*parse_fail_on(text, option))


DEFAULT_RULES = (FailRule("energy_per_output_token_j", 5.0), FailRule("tokens_per_second", 5.0))
# A/B pairs adjacent windows of one job, so drift cancels and its intervals are several times
# narrower than those of two stored runs (README, "How good is the gate on this machine").
# Its default threshold is therefore lower: a 3-5% slowdown can be "worse" only when the
# threshold sits below it (the whole interval must clear it), and 2% still leaves identical
# code room to be "unchanged" rather than "inconclusive".
AB_DEFAULT_RULES = (FailRule("energy_per_output_token_j", 2.0), FailRule("tokens_per_second", 2.0))
# With a reference model in both runs, the drift-cancelling ratios are gated instead.
REFERENCE_RULES = (FailRule("relative_energy", 5.0), FailRule("relative_time", 5.0))


def default_rules(base: ExperimentResult, head: ExperimentResult) -> tuple[FailRule, ...]:
    """REFERENCE_RULES when both runs measured a reference model, else DEFAULT_RULES."""
    if repeat_values(base, "relative_time") and repeat_values(head, "relative_time"):
        return REFERENCE_RULES
    return DEFAULT_RULES


def repeat_values(result: ExperimentResult, metric: str) -> list[float]:
    values = [getattr(r, metric, None) for r in result.repeats]
    return [float(v) for v in values if v is not None]


def _median_ratio_interval(base: Sequence[float], head: Sequence[float]) -> tuple[float, float]:
    def ratio_of_medians(h: Sequence[float], b: Sequence[float], axis: int = -1) -> Any:
        import numpy as np

        return np.median(h, axis=axis) / np.median(b, axis=axis)

    from scipy import stats as scipy_stats

    result = scipy_stats.bootstrap(
        (list(head), list(base)),
        ratio_of_medians,
        n_resamples=2000,
        method="percentile",
        rng=0,
        vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _ratio_interval(base: Sequence[float], head: Sequence[float]) -> tuple[float | None, float | None]:
    """95% interval of the ratio of means (used below RANK_TEST_MIN_N repeats; the median regime
    uses `_median_ratio_interval`). Delta method on the log scale: var(log mean) ~ s^2 / (n m^2),
    so log(ratio) +- t * se with Welch-Satterthwaite degrees of freedom, then exponentiated."""
    n_b, n_h = len(base), len(head)
    if n_b < 2 or n_h < 2:
        return None, None
    m_b, m_h = statistics.fmean(base), statistics.fmean(head)
    if m_b <= 0 or m_h <= 0:
        return None, None
    v_b = statistics.variance(base) / (n_b * m_b**2)
    v_h = statistics.variance(head) / (n_h * m_h**2)
    se = math.sqrt(v_b + v_h)
    ratio = m_h / m_b
    if se == 0:
        return ratio, ratio
    from scipy import stats as scipy_stats

    t = float(scipy_stats.t.ppf(0.975, _welch_dof(v_b, n_b, v_h, n_h)))
    return ratio * math.exp(-t * se), ratio * math.exp(t * se)


def _welch_dof(v_b: float, n_b: int, v_h: float, n_h: int) -> float:
    """Welch-Satterthwaite degrees of freedom, from each side's variance of its mean and size."""
    return (v_b + v_h) ** 2 / (v_b**2 / (n_b - 1) + v_h**2 / (n_h - 1))


ROUNDING = 1e-12
"""A relative spread this small is floating-point rounding, not variation between repeats."""


def _constant(values: Sequence[float]) -> bool:
    """Whether the repeats differ by rounding at most (a simulated board's identical windows,
    summed in different orders): scipy's tests lose all precision on such samples and warn
    of it, and for a test they are constant."""
    return statistics.pstdev(values) <= ROUNDING * max(abs(v) for v in values)


def significance(base: Sequence[float], head: Sequence[float]) -> tuple[float | None, str]:
    """(p-value, test name); None when there are too few repeats to test."""
    if len(base) < 2 or len(head) < 2:
        return None, "none (fewer than 2 repeats)"
    if _constant(base) and _constant(head):
        same = math.isclose(statistics.fmean(base), statistics.fmean(head), rel_tol=ROUNDING, abs_tol=0.0)
        return (1.0 if same else 0.0), "exact (no variance)"
    if min(len(base), len(head)) >= RANK_TEST_MIN_N:
        from scipy import stats as scipy_stats

        return float(scipy_stats.mannwhitneyu(head, base, alternative="two-sided").pvalue), "mann-whitney-u"
    return _welch_p(base, head), "welch-t"


def _welch_p(base: Sequence[float], head: Sequence[float]) -> float:
    """Welch's two-sided t-test, as `scipy.stats.ttest_ind(equal_var=False)` computes it, but
    from `statistics.variance` (exact sums): a side whose repeats differ by rounding at most
    then loses no precision, where scipy's moments warn of catastrophic cancellation."""
    from scipy import stats as scipy_stats

    v_b, v_h = statistics.variance(base) / len(base), statistics.variance(head) / len(head)
    t = (statistics.fmean(head) - statistics.fmean(base)) / math.sqrt(v_b + v_h)
    return float(2 * scipy_stats.t.sf(abs(t), _welch_dof(v_b, len(base), v_h, len(head))))


def compare_metric(
    metric: str, base: ExperimentResult, head: ExperimentResult, threshold_pct: float | None
) -> MetricComparison | None:
    base_values, head_values = repeat_values(base, metric), repeat_values(head, metric)
    if not base_values or not head_values:
        return None
    base_mean, head_mean = statistics.fmean(base_values), statistics.fmean(head_values)
    if base_mean == 0:
        return None
    p_value, test = significance(base_values, head_values)
    low: float | None
    high: float | None
    statistic: Statistic
    if test == "mann-whitney-u":
        statistic = "median"
        base_value, head_value = statistics.median(base_values), statistics.median(head_values)
        low, high = _median_ratio_interval(base_values, head_values)
    else:
        statistic = "mean"
        base_value, head_value = base_mean, head_mean
        low, high = _ratio_interval(base_values, head_values)
    if base_value == 0:
        return None
    ratio = head_value / base_value
    found = verdict(low, high, p_value, threshold_pct, LOWER_IS_BETTER[metric])
    n = min(len(base_values), len(head_values))
    return MetricComparison(
        metric=metric,
        base_mean=base_mean,
        head_mean=head_mean,
        statistic=statistic,
        base_value=base_value,
        head_value=head_value,
        change_pct=(ratio - 1.0) * 100.0,
        ratio=ratio,
        ratio_ci95_low=low,
        ratio_ci95_high=high,
        confidence=0.95 if low is not None else None,
        p_value=p_value,
        test=test,
        n_base=len(base_values),
        n_head=len(head_values),
        threshold_pct=threshold_pct,
        verdict=found,
        repeats_needed=repeats_to_settle(n, ratio, low, high, threshold_pct)
        if found == "inconclusive" and threshold_pct is not None
        else None,
    )


def _paired_values(
    metric: str, base: Sequence[Mapping[str, Any]], head: Sequence[Mapping[str, Any]]
) -> tuple[list[float], list[float], list[float]]:
    """(ratios of the adjacent pairs in order, known base values, known head values)."""
    base_values = [window.get(metric) for window in base]
    head_values = [window.get(metric) for window in head]
    return (
        pair_ratios(base_values, head_values),
        [float(v) for v in base_values if v is not None],
        [float(v) for v in head_values if v is not None],
    )


def judge_pairs(
    base: Sequence[Mapping[str, Any]],
    head: Sequence[Mapping[str, Any]],
    rules: Sequence[FailRule] | None = None,
) -> tuple[list[Verdict], str]:
    """The A/B verdicts of the gated metrics after the pairs so far (windows as dicts), and a
    line for the progress display: what `HeadTurns` asks after every pair to decide whether to
    take another. The same sequences as `compare_paired`, so the stop and the verdict agree."""
    verdicts: list[Verdict] = []
    parts: list[str] = []
    for rule in rules or AB_DEFAULT_RULES:
        ratios, _, _ = _paired_values(rule.metric, base, head)
        if not ratios:
            continue
        found = sequence_of(ratios)
        found_verdict = sequential_verdict(found, rule.pct, LOWER_IS_BETTER[rule.metric])
        verdicts.append(found_verdict)
        low, high = found.interval()
        bounds = "open" if low is None or high is None else f"{low - 1:+.1%}..{high - 1:+.1%}"
        parts.append(f"{rule.metric} {math.exp(found.estimate) - 1:+.1%} ({bounds}) {found_verdict}")
    return verdicts, "; ".join(parts)


def compare_paired_metric(
    metric: str, base: ExperimentResult, head: ExperimentResult, threshold_pct: float | None
) -> MetricComparison | None:
    """A/B: the ratio head/base of each adjacent pair of windows, as a confidence sequence
    over the pairs in the order they were taken (pytest_llem.gate.sequential)."""
    ratios, known_base, known_head = _paired_values(
        metric, [r.model_dump() for r in base.repeats], [r.model_dump() for r in head.repeats]
    )
    if not ratios:
        return None
    found = sequence_of(ratios)
    result = sequential_verdict(found, threshold_pct, LOWER_IS_BETTER[metric])
    ratio = math.exp(found.estimate)
    low, high = found.interval()
    return MetricComparison(
        metric=metric,
        base_mean=statistics.fmean(known_base),
        head_mean=statistics.fmean(known_head),
        statistic="paired",
        base_value=statistics.median(known_base),
        head_value=statistics.median(known_head),
        change_pct=(ratio - 1.0) * 100.0,
        ratio=ratio,
        ratio_ci95_low=low,
        ratio_ci95_high=high,
        confidence=1.0 - found.alpha,
        p_value=found.p_value,
        test=METHOD,
        n_base=len(known_base),
        n_head=len(known_head),
        n_pairs=found.n,
        threshold_pct=threshold_pct,
        verdict=result,
        repeats_needed=pairs_to_settle(found, threshold_pct)
        if result == "inconclusive" and threshold_pct is not None
        else None,
    )


def comparable(
    base: ExperimentResult, head: ExperimentResult, base_fp: str | None, head_fp: str | None
) -> str:
    """Empty when comparable, else the reason they are not."""
    if base_fp and head_fp and base_fp != head_fp:
        return f"different machines (fingerprint {base_fp} vs {head_fp})"
    if base.config_hash != head.config_hash:
        return f"different configs (config_hash {base.config_hash} vs {head.config_hash})"
    base_source = base.energy.source if base.energy else None
    head_source = head.energy.source if head.energy else None
    if base_source != head_source:
        return f"different energy meters ({base_source} vs {head_source})"
    if base.status != "passed" or head.status != "passed":
        return f"experiment not passed (base {base.status}, head {head.status})"
    return ""


def invalid_energy_reason(base: ExperimentResult, head: ExperimentResult) -> str:
    """Why the energy figures are not gated ("" when both sides are publishable or estimated):
    an invalid experiment stores no energy figure (measure.validity), and says which rule."""
    parts = []
    for side, result in (("base", base), ("head", head)):
        if result.validity is not None and result.validity.status == "invalid":
            parts.append(f"{side} ({', '.join(c.name for c in result.validity.failed)})")
    return f"energy not gated: invalid on {' and '.join(parts)}" if parts else ""


def validity_summary(base: ExperimentResult, head: ExperimentResult) -> str | None:
    """Both sides' validity in a few words, for the PR comment: the worse of the two."""
    statuses = [r.validity.status for r in (base, head) if r.validity is not None]
    if not statuses:
        return None
    reason = invalid_energy_reason(base, head)
    if reason:
        return "invalid: " + reason.removeprefix("energy not gated: invalid on ")
    return "estimated" if "estimated" in statuses else "valid"


def _energy_estimated(*results: ExperimentResult) -> bool:
    return any(r.energy is not None and r.energy.source != "none" and not r.energy.measured for r in results)


def compare_experiment(
    base: ExperimentResult,
    head: ExperimentResult,
    rules: Sequence[FailRule] | None = None,
    base_fp: str | None = None,
    head_fp: str | None = None,
) -> ExperimentComparison:
    """Compare one experiment with its baseline twin; `rules=None` means `default_rules`."""
    reason = comparable(base, head, base_fp, head_fp)
    if reason:
        return ExperimentComparison(
            nodeid=head.nodeid, config_hash=head.config_hash, verdict="not comparable", reason=reason
        )
    thresholds = {rule.metric: rule.pct for rule in (rules or default_rules(base, head))}
    metrics = [
        m
        for metric in dict.fromkeys([*thresholds, "energy_per_output_token_j", "tokens_per_second"])
        if (m := compare_metric(metric, base, head, thresholds.get(metric))) is not None
    ]
    return ExperimentComparison(
        nodeid=head.nodeid,
        config_hash=head.config_hash,
        verdict=combine([m.verdict for m in metrics if m.threshold_pct is not None]),
        reason=invalid_energy_reason(base, head),
        energy_estimated=_energy_estimated(base, head),
        validity=validity_summary(base, head),
        metrics=metrics,
    )


def config_changes(base: ExperimentResult, head: ExperimentResult) -> list[str]:
    """Settings that differ between base and head, as 'path: base -> head' lines."""

    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for key, value in data.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): data}

    before = flat(base.config.model_dump(mode="json"))
    after = flat(head.config.model_dump(mode="json"))
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def compare_paired(
    base: ExperimentResult,
    head: ExperimentResult,
    rules: Sequence[FailRule] | None = None,
    window_order: str = "",
) -> ExperimentComparison:
    """A/B: compare the head experiment with the base experiment measured in the adjacent
    windows of the same job. Config differences are shown, not refused (a dtype change is a
    legitimate change to gate on); energy figures from different meters are not compared."""
    changes = config_changes(base, head)
    if base.status != "passed" or head.status != "passed":
        return ExperimentComparison(
            nodeid=head.nodeid,
            config_hash=head.config_hash,
            verdict="not comparable",
            reason=f"experiment not passed (base {base.status}, head {head.status})",
            mode="ab",
            config_changes=changes,
            window_order=window_order,
        )
    thresholds = {rule.metric: rule.pct for rule in (rules or AB_DEFAULT_RULES)}
    candidates = list(dict.fromkeys([*thresholds, "energy_per_output_token_j", "tokens_per_second"]))
    base_source = base.energy.source if base.energy else None
    head_source = head.energy.source if head.energy else None
    reason = invalid_energy_reason(base, head)
    if base_source != head_source:
        candidates = [m for m in candidates if not m.startswith("energy") and m != "relative_energy"]
        reason = f"energy not compared: different meters ({base_source} vs {head_source})"
    metrics = [
        m
        for metric in candidates
        if (m := compare_paired_metric(metric, base, head, thresholds.get(metric))) is not None
    ]
    return ExperimentComparison(
        nodeid=head.nodeid,
        config_hash=head.config_hash,
        verdict=combine([m.verdict for m in metrics if m.threshold_pct is not None]),
        reason=reason,
        mode="ab",
        config_changes=changes,
        window_order=window_order,
        energy_estimated=_energy_estimated(base, head),
        validity=validity_summary(base, head),
        metrics=metrics,
    )


def compare_reports(
    base: SessionReport, head: SessionReport, rules: Sequence[FailRule] | None = None
) -> list[ExperimentComparison]:
    """Every head experiment matched to its base twin by test id; base-only ones are 'missing'."""
    by_id = {r.nodeid: r for r in base.experiments}
    out = []
    for result in head.experiments:
        twin = by_id.pop(result.nodeid, None)
        if twin is None:
            out.append(
                ExperimentComparison(nodeid=result.nodeid, config_hash=result.config_hash, verdict="new")
            )
        else:
            out.append(
                compare_experiment(
                    twin,
                    result,
                    rules,
                    twin.fingerprint or base.fingerprint,
                    result.fingerprint or head.fingerprint,
                )
            )
    out.extend(
        ExperimentComparison(nodeid=r.nodeid, config_hash=r.config_hash, verdict="missing")
        for r in by_id.values()
    )
    return out
