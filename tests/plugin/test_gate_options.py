"""The gate cannot be switched off by accident: a fail-on rule names a gated metric and a
finite threshold > 0, or the session stops with one line before anything is measured."""

from __future__ import annotations

import pytest

from pytest_llem.gate.compare import FailRule
from pytest_llem.gate.gated_metrics import GATED_METRICS, allowed_metrics, parse_fail_on

pytest_plugins = ["pytester"]

DISABLING = [
    "tokens_per_second:nan",
    "tokens_per_second:inf",
    "tokens_per_second:1e309",
    "tokens_per_second:0",
    "tokens_per_second:-5",
    "tokens_per_second:1e300",
]
MALFORMED = ["tokens_per_second", "tokens_per_second:", "tokens_per_second:five", "speed:5", ":5", ""]


@pytest.mark.parametrize("text", DISABLING + MALFORMED)
def test_a_rule_the_gate_cannot_apply_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValueError) as info:
        FailRule.parse(text)
    message = str(info.value)
    assert message.startswith(f"--llem-fail-on={text!r}: ") and "\n" not in message


def test_an_unknown_metric_lists_the_allowed_ones_from_the_registry() -> None:
    with pytest.raises(ValueError, match=f"unknown metric 'speed'; allowed: {allowed_metrics()}$"):
        parse_fail_on("speed:5")


@pytest.mark.parametrize("metric", list(GATED_METRICS))
def test_every_gated_metric_with_a_finite_threshold_is_accepted(metric: str) -> None:
    assert parse_fail_on(f"{metric}:2.5%") == (metric, 2.5)


@pytest.mark.parametrize("source", ["option", "ini"])
def test_a_disabling_fail_on_value_is_a_usage_error_before_anything_runs(
    pytester: pytest.Pytester, source: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    if source == "ini":
        pytester.makeini("[pytest]\nllem_fail_on = tokens_per_second:nan\n")
        result = pytester.runpytest("-p", "no:cacheprovider")
    else:
        result = pytester.runpytest("-p", "no:cacheprovider", "--llem-fail-on=tokens_per_second:nan")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert lines == [
        "ERROR: --llem-fail-on='tokens_per_second:nan': PCT must be a finite number > 0 and <= 1000 "
        "(a threshold the gate cannot apply would turn it off); e.g. --llem-fail-on=tokens_per_second:5"
    ]
    assert "Traceback" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()


def test_help_lists_every_gated_metric(pytester: pytest.Pytester) -> None:
    text = " ".join(pytester.runpytest("--help").stdout.str().split())
    assert f"METRIC is one of: {allowed_metrics()};" in text
