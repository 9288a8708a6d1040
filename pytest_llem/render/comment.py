"""The pull-request comment: a Markdown table a reviewer can read in ten seconds.

One row per experiment, one column per metric and one for validity (whether the energy
figures compared are publishable: valid, estimated, or invalid and why), a one-line headline ("2 worse, 1 inconclusive,
9 unchanged"). Every figure carries its unit, modelled energy says "(estimated)", and numbers
are rounded to what their interval supports: a change known to +-4% is not printed as +3.17%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytest_llem.gate.compare import UNITS
from pytest_llem.gate.verdicts import headline
from pytest_llem.render.numbers import ESTIMATE_DIGITS
from pytest_llem.schema.comparison import ExperimentComparison, MetricComparison

LABELS = {
    "energy_per_output_token_j": "energy / output token",
    "tokens_per_second": "throughput",
    "time_per_output_token_s": "time / output token",
    "relative_time": "time vs reference",
    "relative_energy": "energy vs reference",
}


def _pct_decimals(m: MetricComparison) -> int:
    """Decimals of a percentage: the last digit is the first one the interval leaves
    uncertain (+-3% -> whole percent, +-0.4% -> one decimal)."""
    if m.ratio_ci95_low is None or m.ratio_ci95_high is None:
        return 0
    half = (m.ratio_ci95_high - m.ratio_ci95_low) * 50.0
    if half <= 0:
        return 1
    return max(0, min(2, -math.floor(math.log10(half))))


def _value_digits(m: MetricComparison) -> int:
    """Significant digits of a value, matched to the interval's relative half-width."""
    if m.ratio_ci95_low is None or m.ratio_ci95_high is None:
        return 2
    half = (m.ratio_ci95_high - m.ratio_ci95_low) / 2.0
    if half <= 0:
        return 4
    return max(2, min(5, 1 - math.floor(math.log10(half))))


def _value(value: float | None, digits: int) -> str:
    """`value` to `digits` significant digits, in plain notation where it reads better
    (156.3 at 2 digits is "160", not "1.6e+02"; 0.2 at 3 is "0.200": the zeros are known digits);
    exponents only for very large or small values."""
    if value is None:
        return "?"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    if not -4 <= magnitude < 6:
        return f"{value:.{digits}g}"
    places = digits - 1 - magnitude
    return f"{round(value, places):.{max(0, places)}f}"


def metric_cell(m: MetricComparison, estimated: bool, comparison: ExperimentComparison | None = None) -> str:
    """A/B: the paired change with its interval first, then the verdict with its pairs, and
    the window medians labelled as what they are (their ratio is not the paired change: the
    two can differ by several percent on a drifting machine). Stored mode: values, change."""
    digits, decimals = _value_digits(m), _pct_decimals(m)
    if estimated and "energy" in m.metric:
        digits = min(digits, ESTIMATE_DIGITS)  # an estimate is good to a factor, not to 5 digits
    base = m.base_value if m.base_value is not None else m.base_mean
    head = m.head_value if m.head_value is not None else m.head_mean
    unit = UNITS.get(m.metric, "")
    values = f"{_value(base, digits)} → {_value(head, digits)} {unit}"
    if estimated and "energy" in m.metric:
        values += " (estimated)"
    change = f"{m.change_pct:+.{decimals}f}%"
    if m.ratio_ci95_low is not None and m.ratio_ci95_high is not None:
        low, high = (m.ratio_ci95_low - 1) * 100, (m.ratio_ci95_high - 1) * 100
        change += f", CI {low:+.{decimals}f}…{high:+.{decimals}f}%"
    if m.statistic == "paired":
        verdict = verdict_text(m, comparison)
        verdict = f"**{verdict}**" if m.verdict == "worse" else verdict
        return f"{change} {verdict}; window medians {values}"
    verdict = m.verdict
    if verdict == "inconclusive" and m.repeats_needed is not None:
        verdict += f", ~{m.repeats_needed} repeats"
    if verdict.startswith("worse"):
        verdict = f"**{verdict}**"
    return f"{values} ({change}) {verdict}"


def verdict_text(m: MetricComparison, comparison: ExperimentComparison | None) -> str:
    """ "inconclusive after 60 pairs (max pairs), ~140 more would likely settle it"."""
    text: str = m.verdict
    if m.n_pairs is not None and m.threshold_pct is not None:
        why = comparison.stopped_because if comparison is not None else None
        text += f" after {m.n_pairs} pairs" + (f" ({why})" if why and why != "settled" else "")
    if m.verdict == "inconclusive" and m.repeats_needed is not None and m.n_pairs is not None:
        text += f", ~{max(1, m.repeats_needed - m.n_pairs)} more would likely settle it"
    return text


def render_comment(comparisons: Sequence[ExperimentComparison], title: str = "pytest-llem comparison") -> str:
    metrics: list[str] = []
    for comparison in comparisons:
        metrics.extend(m.metric for m in comparison.metrics if m.metric not in metrics)
    gated = sorted(
        {m.metric for c in comparisons for m in c.metrics if m.threshold_pct is not None}, key=metrics.index
    )
    metrics = gated + [m for m in metrics if m not in gated]
    verdicts = [c.verdict for c in comparisons]
    with_validity = any(c.validity is not None for c in comparisons)
    headers = [
        "experiment",
        "verdict",
        *(LABELS.get(m, m) for m in metrics),
        *(["validity"] if with_validity else []),
        "config changes",
    ]
    lines = [f"### {title}", "", f"**{headline(verdicts)}**", ""]
    limits = sorted(
        {f"{m.metric} ±{m.threshold_pct:g}%" for c in comparisons for m in c.metrics if m.threshold_pct}
    )
    modes = {c.mode for c in comparisons}
    method = (
        "base and head interleaved ABBA in one job, pairs added until each verdict settled; the "
        "change is the median head/base ratio of paired windows with its 95% confidence sequence"
        if modes == {"ab"}
        else "stored baseline; independent windows"
    )
    lines.append(f"Gate: {', '.join(limits) or 'no gated metric'} ({method}). 95% intervals of head/base.")
    lines.append("")
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for comparison in comparisons:
        by_metric = {m.metric: m for m in comparison.metrics}
        cells = [
            f"`{comparison.nodeid}`",
            comparison.verdict if comparison.verdict != "worse" else "**worse**",
        ]
        for metric in metrics:
            found = by_metric.get(metric)
            cells.append(metric_cell(found, comparison.energy_estimated, comparison) if found else "")
        if with_validity:
            cells.append(comparison.validity or "")
        notes = list(comparison.config_changes)
        if comparison.reason:
            notes.append(comparison.reason)
        cells.append("; ".join(notes))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
