"""Comparison records: one metric, and one experiment, against the other side of the gate.

`ExperimentResult.comparison` holds an `ExperimentComparison`, so the gate, the report and
every renderer (table, Markdown, JSON, JUnit) read one typed record."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

Verdict = Literal["better", "worse", "unchanged", "inconclusive", "info", "new", "missing", "not comparable"]
Statistic = Literal["mean", "median", "paired"]
_ORIGIN = ("baseline", "base_ref", "base_commit", "base_report", "base_isolation_leaks")


class MetricComparison(BaseModel):
    """One metric of one experiment. `base_value`/`head_value` are the statistic the ratio is
    built from (means, medians, or for paired windows the medians of the paired windows), so
    the change column always agrees with the value columns."""

    metric: str
    base_mean: float
    head_mean: float
    statistic: Statistic = "mean"
    base_value: float | None = None
    head_value: float | None = None
    change_pct: float
    ratio: float
    ratio_ci95_low: float | None
    ratio_ci95_high: float | None
    confidence: float | None = None
    p_value: float | None
    test: str
    n_base: int
    n_head: int
    n_pairs: int | None = None
    threshold_pct: float | None
    verdict: Verdict
    repeats_needed: int | None = None


class ExperimentComparison(BaseModel):
    """An experiment against its twin (stored baseline) or its base (A/B), with a verdict."""

    nodeid: str
    config_hash: str
    verdict: Verdict
    reason: str = ""
    mode: Literal["stored", "ab"] = "stored"
    config_changes: list[str] = []  # "dtype: float32 -> bfloat16", shown, never refused in A/B
    window_order: str = ""  # A/B: who measured when, e.g. "ABBAABBA" (A base, B head)
    pairs_taken: int | None = None  # A/B: measured pairs when the sequence stopped
    # A/B: why it stopped: "settled", "max pairs", "budget", "base ended", "repeats" (no gate rule)
    stopped_because: str | None = None
    energy_estimated: bool = False
    # "valid", "estimated", or "invalid: head (window_length)": whether the energy figures
    # compared are publishable (pytest_llem.measure.validity); None where neither side says
    validity: str | None = None
    metrics: list[MetricComparison] = []
    # where the other side came from: a stored baseline, or the A/B base (left out when unset)
    baseline: str | None = None
    base_ref: str | None = None
    base_commit: str | None = None
    base_report: str | None = None
    base_isolation_leaks: list[str] | None = None

    @model_serializer(mode="wrap")
    def _without_unset_origin(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in _ORIGIN:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @property
    def regressed(self) -> bool:
        return self.verdict == "worse"

    def fails(self, fail_on_inconclusive: bool = False) -> bool:
        """Whether this comparison fails the gate: worse always, inconclusive when strict."""
        return self.verdict == "worse" or (fail_on_inconclusive and self.verdict == "inconclusive")
