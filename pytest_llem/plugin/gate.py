"""The CI regression gate, in two modes, with one set of verdicts.

- Stored baseline: `--llem-compare BASELINE` compares each experiment with its twin in a
  saved run of the same machine.
- A/B: `--llem-ab REF` runs each experiment of REF in a worktree at the same time, windows
  interleaved ABBA, and compares the paired windows (pytest_llem.plugin.ab).

Each experiment is compared right after it is measured, so a "worse" verdict fails that test
with a short message (never a hook traceback); `--llem-fail-on-inconclusive` also fails the
unsettled ones. The verdict goes into the report, the JUnit XML properties, the terminal
summary and the Markdown comment, which therefore always agree with the exit code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from pytest_llem.gate.compare import FailRule, compare_experiment, compare_paired, judge_pairs
from pytest_llem.gate.sequential import DEFAULT_BUDGET_S, DEFAULT_MAX_PAIRS, PairPlan
from pytest_llem.gate.verdicts import headline
from pytest_llem.plugin.session_options import session_options
from pytest_llem.plugin.state import GATE_KEY, LlemState
from pytest_llem.render.comparison import regression_message, render_gate_summary, to_markdown
from pytest_llem.render.numbers import interval_text, p_text
from pytest_llem.schema.comparison import ExperimentComparison
from pytest_llem.schema.limits import MAX_REPEATS, MAX_TTL_S
from pytest_llem.schema.results import ExperimentResult, GateRecord, SessionReport
from pytest_llem.store.files import atomic_write
from pytest_llem.store.report import ReportError, read_report

if TYPE_CHECKING:
    from pytest_llem.plugin.ab.session import AbRun


class AbSide(Protocol):
    """What the gate's record, table and comment tell of an A/B run: an `AbRun` in the process
    that ran the tests, `WorkersAb` on an xdist controller."""

    @property
    def ref(self) -> str: ...

    @property
    def commit(self) -> str | None: ...

    @property
    def base_nodeids(self) -> list[str]: ...

    @property
    def head_nodeids(self) -> list[str]: ...


@dataclass
class WorkersAb:
    """A/B under pytest-xdist, seen from the controller: each worker ran its own base on its
    own slot and wrote what it collected (`<run>/workers/<id>.ab.json`); read back here."""

    directory: Path
    ref: str

    def _sides(self) -> list[dict[str, Any]]:
        sides = []
        for path in sorted(self.directory.glob("*.ab.json")):
            try:
                sides.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return sides

    @property
    def commit(self) -> str | None:
        return next((str(side["commit"]) for side in self._sides() if side.get("commit")), None)

    @property
    def base_nodeids(self) -> list[str]:
        return sorted({nodeid for side in self._sides() for nodeid in side.get("base_nodeids", [])})

    @property
    def head_nodeids(self) -> list[str]:
        return sorted({nodeid for side in self._sides() for nodeid in side.get("head_nodeids", [])})


@dataclass
class Gate:
    rules: tuple[FailRule, ...] | None  # None: compare.default_rules per experiment
    fail_on_inconclusive: bool = False
    baseline: SessionReport | None = None
    baseline_path: Path | None = None
    ab: AbRun | None = None  # the A/B run of this process, which runs the tests
    fail_on_invalid: bool = False
    workers_ab: WorkersAb | None = None  # the xdist controller's view of its workers' A/B runs

    @property
    def side(self) -> AbSide | None:
        return self.ab if self.ab is not None else self.workers_ab


class GatePlugin:
    """Registered in `pytest_configure` only when the gate is on (`--llem-compare` or
    `--llem-ab`), and kept in `config.stash[GATE_KEY]` where the report writer finds its record.
    It judges each experiment right after it is measured (a result check), and prints its
    table and writes the comment at the end."""

    def __init__(self, state: LlemState, gate: Gate) -> None:
        self.state = state
        self.gate = gate
        self._experiments: dict[str, int] = {}  # by test: experiments recorded so far

    def pytest_llem_experiment_result(self, item: pytest.Item, result: ExperimentResult) -> None:
        """Count the test's experiments, failed ones too, as the A/B base side counts its own."""
        self._experiments[item.nodeid] = self._experiments.get(item.nodeid, 0) + 1

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._experiments.pop(nodeid, None)

    def check(self, item: pytest.Item, result: ExperimentResult) -> None:
        index = max(0, self._experiments.get(item.nodeid, 0) - 1)  # this test's n-th experiment
        apply_gate(self.state, self.gate, item, result, index)

    def record(self, results: list[ExperimentResult]) -> GateRecord:
        return gate_record(self.gate, results)

    def summary(self, results: list[ExperimentResult], terminalreporter: Any) -> None:
        gate_summary(self.state.config, self.gate, results, terminalreporter)

    def pytest_unconfigure(self) -> None:
        """Under xdist, after the workers are gone (xdist ends them at session finish): remove any base checkout a worker left (one
        stopped by the controller's exit timeout before its own clean-up ran)."""
        if self.gate.workers_ab is None:
            return
        from pytest_llem.plugin.ab.worktree import WorktreeError, remove_stale, repository_root

        try:
            root = repository_root(self.state.config.invocation_params.dir)
        except WorktreeError:
            return
        remove_stale(root, self.state.store.root.resolve())


def configure_gate(state: LlemState) -> None:
    """Register the gate plugin when an option turns it on; bad options are usage errors."""
    config = state.config
    asked = session_options(config)
    reference = asked.compare
    ab_ref = asked.ab
    rule_texts = asked.fail_on
    strict = asked.fail_on_inconclusive
    fail_on_invalid = asked.fail_on_invalid
    try:
        rules = tuple(FailRule.parse(text) for text in rule_texts) or None
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if reference and ab_ref:
        raise pytest.UsageError(
            f"--llem-compare {reference} and --llem-ab {ab_ref}: choose one mode of the gate "
            "(A/B needs no stored baseline)"
        )
    gate: Gate | None = None
    if ab_ref:
        from pytest_llem.plugin.ab.session import configure_ab

        plan = _pair_plan(config)
        if not state.is_worker and getattr(config.option, "numprocesses", None):
            # xdist: every worker starts its own base on its own slot; this one only reports
            from pytest_llem.plugin.ledger import LEDGER_DIR

            gate = Gate(rules, strict, workers_ab=WorkersAb(state.run_dir / LEDGER_DIR, str(ab_ref)))
            run = None
        else:
            run = configure_ab(state, str(ab_ref))
        if run is not None:
            gate = Gate(rules, strict, ab=run)
            run.turns.plan = plan
            run.turns.judge = partial(judge_pairs, rules=rules)
    elif reference:
        try:
            fingerprint = state.store.fingerprint(state.session.environment())
            path = state.store.resolve(str(reference), fingerprint, exclude=state.run.created_dir)
            gate = Gate(rules, strict, read_report(path), path)
        except ReportError as exc:
            raise pytest.UsageError(f"--llem-compare: {exc}") from None
    if gate is not None:
        gate.fail_on_invalid = fail_on_invalid
        plugin = GatePlugin(state, gate)
        config.stash[GATE_KEY] = plugin
        state.result_checks.append(plugin.check)
        config.pluginmanager.register(plugin, "llem-gate")


def _pair_plan(config: pytest.Config) -> PairPlan:
    """A/B's limits on the pairs of one experiment: --llem-ab-max-pairs, --llem-ab-budget-s
    (defaults and why: pytest_llem.gate.sequential)."""
    max_pairs = session_options(config).ab_max_pairs
    budget = session_options(config).ab_budget_s
    if max_pairs is not None and not 1 <= max_pairs <= MAX_REPEATS:
        raise pytest.UsageError(
            f"--llem-ab-max-pairs={max_pairs}: must be between 1 and {MAX_REPEATS}, e.g. --llem-ab-max-pairs=60"
        )
    if budget is not None and not (math.isfinite(budget) and 0 < budget <= MAX_TTL_S):
        raise pytest.UsageError(
            f"--llem-ab-budget-s={budget}: must be a number of seconds > 0, e.g. --llem-ab-budget-s=300"
        )
    return PairPlan(
        0,
        DEFAULT_MAX_PAIRS if max_pairs is None else int(max_pairs),
        DEFAULT_BUDGET_S if budget is None else float(budget),
    )


def _ab_comparison(gate: Gate, ab: AbRun, index: int, result: ExperimentResult) -> ExperimentComparison:
    """The head's `index`-th experiment of a test against the base's, with where the base came from."""
    base_json = ab.turns.base_result(index)
    order = ab.turns.take_order()
    if base_json is None:
        reason = "no base experiment for this test" + (f" ({ab.turns.broken})" if ab.turns.broken else "")
        comparison = ExperimentComparison(
            nodeid=result.nodeid,
            config_hash=result.config_hash,
            verdict="new",
            reason=reason,
            mode="ab",
            window_order=order,
        )
    else:
        base = ExperimentResult.model_validate_json(base_json)
        comparison = compare_paired(base, result, gate.rules, order)
        stopped = ab.turns.take_stop()
        if stopped is not None:
            comparison.pairs_taken, comparison.stopped_because = stopped
    # a comparison of our own making: typed assignments, which mypy checks
    comparison.base_ref, comparison.base_commit = ab.worktree.ref, ab.worktree.commit
    comparison.base_report = str(ab.base_report)
    if ab.leaked:
        comparison.base_isolation_leaks = ab.leaked
    return comparison


def apply_gate(state: LlemState, gate: Gate, item: pytest.Item, result: ExperimentResult, index: int) -> None:
    """Judge the test's `index`-th experiment against its base; fail the test where the rules say."""
    if gate.ab is not None:
        comparison = _ab_comparison(gate, gate.ab, index, result)
    else:
        assert gate.baseline is not None
        twin = next((r for r in gate.baseline.experiments if r.nodeid == result.nodeid), None)
        if twin is None:
            comparison = ExperimentComparison(
                nodeid=result.nodeid, config_hash=result.config_hash, verdict="new"
            )
        else:
            head_fp = state.store.fingerprint(state.session.environment())
            base_fp = twin.fingerprint or gate.baseline.fingerprint
            comparison = compare_experiment(twin, result, gate.rules, base_fp, head_fp)
        comparison.baseline = str(gate.baseline_path)
    result.comparison = comparison
    record_properties(item, comparison)
    if comparison.fails(gate.fail_on_inconclusive):
        pytest.fail(regression_message(comparison), pytrace=False)
    if gate.fail_on_invalid and comparison.reason.startswith("energy not gated: invalid"):
        pytest.fail(f"llem {comparison.reason} (--llem-fail-on-invalid)", pytrace=False)


def record_properties(item: pytest.Item, comparison: ExperimentComparison) -> None:
    """JUnit XML properties: the verdict of the experiment and of every metric."""
    item.user_properties.append(("llem_verdict", comparison.verdict))
    if comparison.reason:
        item.user_properties.append(("llem_reason", comparison.reason))
    if comparison.config_changes:
        item.user_properties.append(("llem_config_changes", "; ".join(comparison.config_changes)))
    if comparison.window_order:
        item.user_properties.append(("llem_window_order", comparison.window_order))
    if comparison.pairs_taken is not None:
        item.user_properties.append(("llem_pairs", str(comparison.pairs_taken)))
    if comparison.stopped_because is not None:
        item.user_properties.append(("llem_stopped_because", comparison.stopped_because))
    for metric in comparison.metrics:
        prefix = f"llem_{metric.metric}"
        item.user_properties.append((f"{prefix}_verdict", metric.verdict))
        item.user_properties.append((f"{prefix}_change_pct", f"{metric.change_pct:.3f}"))
        if metric.p_value is not None:
            item.user_properties.append((f"{prefix}_p_value", p_text(metric.p_value, digits=4)))
        if metric.ratio_ci95_low is not None and metric.ratio_ci95_high is not None:
            interval = interval_text(metric.ratio_ci95_low, metric.ratio_ci95_high, decimals=4)
            item.user_properties.append((f"{prefix}_ratio_ci95", interval))
        if metric.repeats_needed is not None:
            item.user_properties.append((f"{prefix}_repeats_needed", str(metric.repeats_needed)))


def session_comparisons(gate: Gate, results: list[ExperimentResult]) -> list[ExperimentComparison]:
    """Every comparison of the session, from the results (so xdist workers' count too), plus
    the base-only tests of an A/B run as "missing"."""
    found = [r.comparison for r in results if r.comparison is not None]
    side = gate.side
    if side is not None:
        head = set(side.head_nodeids)
        found.extend(
            ExperimentComparison(nodeid=nodeid, config_hash="", verdict="missing", mode="ab")
            for nodeid in side.base_nodeids
            if nodeid not in head
        )
    return found


def gate_record(gate: Gate, results: list[ExperimentResult]) -> GateRecord:
    """The gate of this session for the JSON report: the same comparisons, headline and
    base-only tests as the terminal table and the comment."""
    comparisons = session_comparisons(gate, results)
    side = gate.side
    return GateRecord(
        mode="ab" if side is not None else "stored",
        reference=side.ref if side is not None else str(gate.baseline_path),
        base_commit=side.commit if side is not None else None,
        headline=headline([c.verdict for c in comparisons]),
        missing=[c.nodeid for c in comparisons if c.verdict == "missing"],
    )


def gate_summary(
    config: pytest.Config, gate: Gate, results: list[ExperimentResult], terminalreporter: Any
) -> None:
    """Print the gate's table and write the Markdown comment when asked (--llem-markdown)."""
    comparisons = session_comparisons(gate, results)
    if not comparisons:
        return
    terminalreporter.write(render_gate_summary(comparisons))
    target = session_options(config).markdown
    if target:
        side = gate.side
        title = (
            f"pytest-llem A/B: {side.ref} ({(side.commit or '?')[:10]}) → working tree"
            if side is not None
            else f"pytest-llem: {gate.baseline_path} → this run"
        )
        text = to_markdown(comparisons, title)

        def write(tmp: str) -> None:
            Path(tmp).write_text(text, encoding="utf-8")

        atomic_write(Path(target), write)
        terminalreporter.write_line(f"llem gate comment: {target}")
