"""Comparing two runs: matched experiments, statistics across repeats, and verdicts.

A change counts as a regression only when it is both large and statistically significant
across repeats: p < 0.05, and the whole 95% interval of the ratio head/base lies beyond the
METRIC:PCT threshold (so a change measured at 6% with an interval reaching down to 2% does not
fail a 5% gate on a noisy machine).

Two regimes, chosen by the number of repeats and recorded with every comparison:
- fewer than 8 repeats on a side: Welch's t-test; the ratio of means with a 95% interval from
  the delta method on the log scale (Welch-Satterthwaite degrees of freedom).
- 8 or more: Mann-Whitney U; the ratio of medians with a seeded bootstrap 95% interval. Shared
  machines slow down in bursts of a second or two; with enough repeats a burst becomes a few
  outliers, which medians and ranks ignore, instead of a shift of the mean. Welch's t-test is used below 8
repeats per side, where a rank test cannot reach significance; Mann-Whitney U (robust to
outliers) from 8 up. The ratio head/base carries a 95% interval from the delta method on the
log scale with Welch-Satterthwaite degrees of freedom.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from pytest_llem.results import ExperimentResult, SessionReport

ALPHA = 0.05
RANK_TEST_MIN_N = 8
LOWER_IS_BETTER = {
    "energy_per_output_token_j": True,
    "energy_j": True,
    "energy_adjusted_j": True,
    "time_per_output_token_s": True,
    "prefill_s": True,
    "window_s": True,
    "tokens_per_second": False,
    "relative_time": True,
    "relative_energy": True,
}
UNITS = {
    "energy_per_output_token_j": "J/token",
    "energy_j": "J",
    "energy_adjusted_j": "J",
    "time_per_output_token_s": "s/token",
    "prefill_s": "s",
    "window_s": "s",
    "tokens_per_second": "tokens/s",
    "relative_time": "x reference",
    "relative_energy": "x reference",
}
Verdict = Literal["better", "worse", "unchanged", "new", "missing", "not comparable"]


@dataclass(frozen=True)
class FailRule:
    metric: str
    pct: float

    @classmethod
    def parse(cls, text: str) -> FailRule:
        metric, _, pct = text.partition(":")
        if metric not in LOWER_IS_BETTER:
            raise ValueError(
                f"--llem-fail-on {text!r}: unknown metric {metric!r}; allowed: {', '.join(LOWER_IS_BETTER)}"
            )
        try:
            value = float(pct.rstrip("%"))
        except ValueError:
            raise ValueError(
                f"--llem-fail-on {text!r}: expected METRIC:PCT, e.g. tokens_per_second:5"
            ) from None
        if value <= 0:
            raise ValueError(f"--llem-fail-on {text!r}: PCT must be > 0")
        return cls(metric, value)


DEFAULT_RULES = (FailRule("energy_per_output_token_j", 5.0), FailRule("tokens_per_second", 5.0))
# With a reference model in both runs, the drift-cancelling ratios are gated instead.
REFERENCE_RULES = (FailRule("relative_energy", 5.0), FailRule("relative_time", 5.0))


def default_rules(base: ExperimentResult, head: ExperimentResult) -> tuple[FailRule, ...]:
    """REFERENCE_RULES when both runs measured a reference model, else DEFAULT_RULES."""
    if repeat_values(base, "relative_time") and repeat_values(head, "relative_time"):
        return REFERENCE_RULES
    return DEFAULT_RULES


class MetricComparison(BaseModel):
    metric: str
    base_mean: float
    head_mean: float
    change_pct: float
    ratio: float
    ratio_ci95_low: float | None
    ratio_ci95_high: float | None
    p_value: float | None
    test: str
    n_base: int
    n_head: int
    threshold_pct: float | None
    verdict: Verdict


class ExperimentComparison(BaseModel):
    nodeid: str
    config_hash: str
    verdict: Verdict
    reason: str = ""
    metrics: list[MetricComparison] = []

    @property
    def regressed(self) -> bool:
        return self.verdict == "worse"


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

    dof = (v_b + v_h) ** 2 / ((v_b**2) / (n_b - 1) + (v_h**2) / (n_h - 1))
    t = float(scipy_stats.t.ppf(0.975, dof))
    return ratio * math.exp(-t * se), ratio * math.exp(t * se)


def significance(base: Sequence[float], head: Sequence[float]) -> tuple[float | None, str]:
    """(p-value, test name); None when there are too few repeats to test."""
    from scipy import stats as scipy_stats

    if len(base) < 2 or len(head) < 2:
        return None, "none (fewer than 2 repeats)"
    if statistics.pstdev(base) == 0 and statistics.pstdev(head) == 0:
        return (1.0 if statistics.fmean(base) == statistics.fmean(head) else 0.0), "exact (no variance)"
    if min(len(base), len(head)) >= RANK_TEST_MIN_N:
        return float(scipy_stats.mannwhitneyu(head, base, alternative="two-sided").pvalue), "mann-whitney-u"
    return float(scipy_stats.ttest_ind(head, base, equal_var=False).pvalue), "welch-t"


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
    if test == "mann-whitney-u":
        ratio = statistics.median(head_values) / statistics.median(base_values)
        low, high = _median_ratio_interval(base_values, head_values)
    else:
        ratio = head_mean / base_mean
        low, high = _ratio_interval(base_values, head_values)
    change_pct = (ratio - 1.0) * 100.0
    verdict: Verdict = "unchanged"
    limit = (threshold_pct or 0.0) / 100.0
    if p_value is not None and p_value < ALPHA and low is not None and high is not None:
        if low > 1.0 + limit:
            verdict = "worse" if LOWER_IS_BETTER[metric] else "better"
        elif high < 1.0 - limit:
            verdict = "better" if LOWER_IS_BETTER[metric] else "worse"
    return MetricComparison(
        metric=metric,
        base_mean=base_mean,
        head_mean=head_mean,
        change_pct=change_pct,
        ratio=ratio,
        ratio_ci95_low=low,
        ratio_ci95_high=high,
        p_value=p_value,
        test=test,
        n_base=len(base_values),
        n_head=len(head_values),
        threshold_pct=threshold_pct,
        verdict=verdict,
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
    gated = [m for m in metrics if m.threshold_pct is not None]
    verdict: Verdict = "unchanged"
    if any(m.verdict == "worse" for m in gated):
        verdict = "worse"
    elif any(m.verdict == "better" for m in gated):
        verdict = "better"
    return ExperimentComparison(
        nodeid=head.nodeid, config_hash=head.config_hash, verdict=verdict, metrics=metrics
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
            out.append(compare_experiment(twin, result, rules, base.fingerprint, head.fingerprint))
    out.extend(
        ExperimentComparison(nodeid=r.nodeid, config_hash=r.config_hash, verdict="missing")
        for r in by_id.values()
    )
    return out


def regression_message(comparison: ExperimentComparison) -> str:
    worse = [m for m in comparison.metrics if m.verdict == "worse"]
    parts = [
        f"{m.metric} {m.change_pct:+.1f}% (limit {m.threshold_pct:g}%, p={m.p_value:.3g} {m.test}, "
        f"ratio 95% CI {_fmt_ci(m)})"
        for m in worse
    ]
    return "llem regression: " + "; ".join(parts)


def _fmt_ci(m: MetricComparison) -> str:
    if m.ratio_ci95_low is None or m.ratio_ci95_high is None:
        return "n/a"
    return f"{m.ratio_ci95_low:.3f}-{m.ratio_ci95_high:.3f}"


def _fmt_value(value: float) -> str:
    return f"{value:.4g}"


def table_rows(comparisons: Sequence[ExperimentComparison]) -> list[list[str]]:
    rows = []
    for comparison in comparisons:
        if not comparison.metrics:
            rows.append(
                [
                    comparison.nodeid,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    f"{comparison.verdict} {comparison.reason}".strip(),
                ]
            )
            continue
        for m in comparison.metrics:
            p = "" if m.p_value is None else f"{m.p_value:.3g}"
            rows.append(
                [
                    comparison.nodeid,
                    m.metric,
                    _fmt_value(m.base_mean),
                    _fmt_value(m.head_mean),
                    f"{m.change_pct:+.1f}%",
                    _fmt_ci(m),
                    p,
                    m.verdict,
                ]
            )
    return rows


HEADERS = ["experiment", "metric", "baseline", "new", "change", "ratio 95% CI", "p", "verdict"]


def to_markdown(comparisons: Sequence[ExperimentComparison], title: str = "pytest-llem comparison") -> str:
    worse = sum(c.verdict == "worse" for c in comparisons)
    lines = [f"### {title}", "", f"{len(comparisons)} experiment(s), {worse} regression(s).", ""]
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "|".join("---" for _ in HEADERS) + "|")
    for row in table_rows(comparisons):
        cells = [cell.replace("|", "\\|") for row_cell in [row] for cell in row_cell]
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def github_action_benchmark(report: SessionReport) -> list[dict[str, object]]:
    """`customSmallerIsBetter` entries for the github-action-benchmark action."""
    entries: list[dict[str, object]] = []
    for result in report.experiments:
        if result.status != "passed":
            continue
        for metric in ("energy_per_output_token_j", "time_per_output_token_s"):
            stats = result.stats.get(metric)
            value = getattr(result, metric)
            if value is None:
                continue
            entry: dict[str, object] = {
                "name": f"{result.nodeid} [{metric}]",
                "unit": UNITS[metric],
                "value": value,
            }
            if stats is not None and stats.ci95_high is not None:
                entry["range"] = f"± {stats.ci95_high - stats.mean:.4g}"
            if metric.startswith("energy") and result.energy is not None:
                entry["extra"] = (
                    f"source={result.energy.source} ({result.energy_label}); config_hash={result.config_hash}"
                )
            entries.append(entry)
    return entries
