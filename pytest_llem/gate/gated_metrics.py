"""The one registry of metrics the regression gate can act on, and the parsing of a
`METRIC:PCT` rule against it.

Why strict: a rule the gate cannot apply (an unknown metric, `nan`, `inf`, `1e309`, 0 or a
negative threshold) would switch the gate off without a word, and a 2x regression would
pass. Every place that names gated metrics (compare, the pytest option help, the `llem`
CLI help and their errors) reads this table, so they cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GatedMetric:
    lower_is_better: bool
    unit: str


GATED_METRICS: dict[str, GatedMetric] = {
    "energy_per_output_token_j": GatedMetric(True, "J/token"),
    "energy_j": GatedMetric(True, "J"),
    "energy_adjusted_j": GatedMetric(True, "J"),
    "time_per_output_token_s": GatedMetric(True, "s/token"),
    "prefill_s": GatedMetric(True, "s"),
    "window_s": GatedMetric(True, "s"),
    "tokens_per_second": GatedMetric(False, "tokens/s"),
    "relative_time": GatedMetric(True, "x reference"),
    "relative_energy": GatedMetric(True, "x reference"),
}
MAX_THRESHOLD_PCT = 1000.0


def allowed_metrics() -> str:
    return ", ".join(GATED_METRICS)


def fail_on_help(default: str, verb: str = "fail") -> str:
    """The help text of a fail-on option, listing every gated metric."""
    return (
        f"{verb} on a significant regression beyond PCT percent, METRIC:PCT, repeatable "
        f"(default {default}); METRIC is one of: {allowed_metrics()}; PCT is a number > 0 and <= "
        f"{MAX_THRESHOLD_PCT:g}"
    )


def parse_fail_on(text: str, option: str = "--llem-fail-on") -> tuple[str, float]:
    """(metric, threshold in percent) from `METRIC:PCT`; ValueError with one line naming the
    option, the value and what is allowed."""
    metric, sep, pct = str(text).strip().partition(":")
    metric = metric.strip()
    example = f"e.g. {option}=tokens_per_second:5"
    if not sep:
        raise ValueError(f"{option}={text!r}: expected METRIC:PCT, {example}")
    if metric not in GATED_METRICS:
        raise ValueError(f"{option}={text!r}: unknown metric {metric!r}; allowed: {allowed_metrics()}")
    try:
        value = float(pct.strip().rstrip("%"))
    except ValueError:
        raise ValueError(f"{option}={text!r}: PCT {pct!r} is not a number; {example}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_THRESHOLD_PCT:
        raise ValueError(
            f"{option}={text!r}: PCT must be a finite number > 0 and <= {MAX_THRESHOLD_PCT:g} "
            f"(a threshold the gate cannot apply would turn it off); {example}"
        )
    return metric, value
