"""A comparison as text: the failure message, the gate's terminal table, `llem compare`'s rows,
the PR comment and github-action-benchmark's JSON, with numbers from `render.numbers`. The comparison itself is computed in `pytest_llem.gate.compare`."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

from pytest_llem.gate.compare import UNITS
from pytest_llem.gate.verdicts import headline
from pytest_llem.render.comment import render_comment, verdict_text
from pytest_llem.render.numbers import ESTIMATE_DIGITS, MEASURED_DIGITS, change_text, interval_text, p_text
from pytest_llem.render.summary import table_text
from pytest_llem.schema.comparison import ExperimentComparison, MetricComparison
from pytest_llem.schema.results import SessionReport


def _metric_line(m: MetricComparison) -> str:
    p = p_text(m.p_value, missing="n/a")
    line = (
        f"{m.metric} {change_text(m.change_pct)} (limit {m.threshold_pct:g}%, p={p} {m.test}, "
        f"ratio 95% CI {interval_text(m.ratio_ci95_low, m.ratio_ci95_high)})"
    )
    if m.repeats_needed is not None:
        unit = "pairs" if m.statistic == "paired" else "repeats"
        line += f"; ~{m.repeats_needed} {unit} would likely settle it"
    return line


def regression_message(comparison: ExperimentComparison) -> str:
    """The one-line failure message of a gated test: worse metrics, or the unsettled ones."""
    if comparison.verdict == "worse":
        return "llem regression: " + "; ".join(
            _metric_line(m) for m in comparison.metrics if m.verdict == "worse"
        )
    unsettled = [m for m in comparison.metrics if m.verdict == "inconclusive"]
    return "llem inconclusive (--llem-fail-on-inconclusive): " + "; ".join(_metric_line(m) for m in unsettled)


def _fmt_value(value: float | None, digits: int = MEASURED_DIGITS) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def verdict_cell(m: MetricComparison, comparison: ExperimentComparison | None = None) -> str:
    """The metric's verdict; for A/B, after how many pairs and why the sequence stopped."""
    if m.statistic == "paired":
        return verdict_text(m, comparison)
    if m.verdict == "inconclusive" and m.repeats_needed is not None:
        return f"inconclusive (~{m.repeats_needed} repeats)"
    return m.verdict


def table_rows(comparisons: Sequence[ExperimentComparison]) -> list[list[str]]:
    """One row per metric; the value columns hold the statistic the change is built from."""
    rows = []
    for comparison in comparisons:
        if not comparison.metrics:
            blank = [""] * (len(HEADERS) - 2)
            rows.append([comparison.nodeid, *blank, f"{comparison.verdict} {comparison.reason}".strip()])
            continue
        for m in comparison.metrics:
            base_value = m.base_value if m.base_value is not None else m.base_mean
            head_value = m.head_value if m.head_value is not None else m.head_mean
            estimated = comparison.energy_estimated and "energy" in m.metric
            digits = ESTIMATE_DIGITS if estimated else MEASURED_DIGITS
            rows.append(
                [
                    comparison.nodeid,
                    m.metric
                    + (" (estimated)" if comparison.energy_estimated and "energy" in m.metric else ""),
                    m.statistic,
                    _fmt_value(base_value, digits),
                    _fmt_value(head_value, digits),
                    change_text(m.change_pct),
                    interval_text(m.ratio_ci95_low, m.ratio_ci95_high),
                    p_text(m.p_value),
                    "" if m.threshold_pct is None else f"{m.threshold_pct:g}%",
                    verdict_cell(m, comparison),
                ]
            )
    return rows


HEADERS = ["experiment", "metric", "of", "baseline", "new", "change", "ratio 95% CI", "p", "limit", "verdict"]


def to_markdown(comparisons: Sequence[ExperimentComparison], title: str = "pytest-llem comparison") -> str:
    """The PR comment (pytest_llem.render.comment): one row per experiment, metrics as columns."""
    return render_comment(comparisons, title)


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


def render_gate_summary(comparisons: list[ExperimentComparison], width: int = 160) -> str:
    """The terminal table: one row per experiment, its verdict, and each gated metric."""
    table = Table(title=f"llem gate: {headline([c.verdict for c in comparisons])}", title_justify="left")
    for column in (
        "experiment",
        "verdict",
        "metric",
        "change",
        "ratio 95% CI",
        "p",
        "test",
        "limit",
        "metric verdict",
    ):
        table.add_column(column, overflow="fold")
    for comparison in comparisons:
        note = comparison.reason or "; ".join(comparison.config_changes)
        gated: list[MetricComparison | None] = [m for m in comparison.metrics if m.threshold_pct is not None]
        gated = gated or [None]
        for m in gated:
            if m is None:
                table.add_row(
                    escape(comparison.nodeid), comparison.verdict, "", "", "", "", escape(note), "", ""
                )
                continue
            table.add_row(
                escape(comparison.nodeid),
                comparison.verdict,
                m.metric,
                change_text(m.change_pct),
                interval_text(m.ratio_ci95_low, m.ratio_ci95_high),
                p_text(m.p_value),
                m.test,
                f"{m.threshold_pct:g}%",
                verdict_cell(m, comparison),
            )
    return table_text(table, width)
