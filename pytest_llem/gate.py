"""The CI regression gate: `--llem-compare BASELINE` with `--llem-fail-on METRIC:PCT`.

Each experiment is compared with its twin in the baseline right after it is measured, so a
significant regression fails that test with a short message (never a hook traceback), and
the verdict is written into the report and into JUnit XML as properties.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_llem import options
from pytest_llem.compare import FailRule, compare_experiment, regression_message
from pytest_llem.report import ReportError, read_report
from pytest_llem.results import ExperimentResult, SessionReport

if TYPE_CHECKING:
    from pytest_llem.plugin import LlemState


@dataclass
class Gate:
    baseline: SessionReport
    baseline_path: Path
    rules: tuple[FailRule, ...] | None  # None: compare.default_rules per experiment


GATE_KEY = pytest.StashKey[Gate | None]()


def configure_gate(state: LlemState) -> None:
    config = state.config
    reference = options.option_value(config, options.option_by_flag("--llem-compare"))
    rule_texts = options.option_value(config, options.option_by_flag("--llem-fail-on")) or []
    try:
        rules = tuple(FailRule.parse(text) for text in rule_texts) or None
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not reference:
        config.stash[GATE_KEY] = None
        return
    try:
        fingerprint = state.store.fingerprint(state.session.environment())
        path = state.store.resolve(str(reference), fingerprint, exclude=state.run_dir)
        config.stash[GATE_KEY] = Gate(read_report(path), path, rules)
    except ReportError as exc:
        raise pytest.UsageError(f"--llem-compare: {exc}") from None


def apply_gate(state: LlemState, item: pytest.Item, result: ExperimentResult) -> None:
    gate = state.config.stash.get(GATE_KEY, None)
    if gate is None:
        return
    twin = next((r for r in gate.baseline.experiments if r.nodeid == result.nodeid), None)
    if twin is None:
        item.user_properties.append(("llem_verdict", "new"))
        result.comparison = {"verdict": "new", "baseline": str(gate.baseline_path)}
        return
    head_fp = state.store.fingerprint(state.session.environment())
    comparison = compare_experiment(twin, result, gate.rules, gate.baseline.fingerprint, head_fp)
    result.comparison = {"baseline": str(gate.baseline_path), **comparison.model_dump(mode="json")}
    item.user_properties.append(("llem_verdict", comparison.verdict))
    if comparison.reason:
        item.user_properties.append(("llem_not_comparable", comparison.reason))
    for metric in comparison.metrics:
        item.user_properties.append((f"llem_{metric.metric}_change_pct", f"{metric.change_pct:.3f}"))
        if metric.p_value is not None:
            item.user_properties.append((f"llem_{metric.metric}_p_value", f"{metric.p_value:.4g}"))
    if comparison.regressed:
        pytest.fail(regression_message(comparison), pytrace=False)
