"""`--llem-require-valid`: an experiment whose energy figure is not publishable fails its test.

The verdict itself is computed with the metrics (pytest_llem.measure.validity); this is only
the pytest side: a result check that turns "invalid" or "estimated" into a test failure with
one line naming the failed rules, never a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # registered at start-up; the records load with the first experiment
    from pytest_llem.schema.results import ExperimentResult


def _value(value: float | str | None) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def record_validity(item: pytest.Item, result: ExperimentResult) -> None:
    """JUnit XML properties: `llem_validity` and the rules an invalid experiment failed."""
    if result.validity is None:
        return
    item.user_properties.append(("llem_validity", result.validity.status))
    if result.validity.failed:
        item.user_properties.append(
            ("llem_validity_failed", ",".join(c.name for c in result.validity.failed))
        )


def require_valid(item: pytest.Item, result: ExperimentResult) -> None:
    if result.status != "passed":
        return  # a failed experiment already fails its test with its own reason
    found = result.validity
    if found is None:
        pytest.fail("llem not valid (--llem-require-valid): no energy was measured", pytrace=False)
    if found.status == "estimated":
        pytest.fail(
            f"llem not valid (--llem-require-valid): energy is estimated by {result.energy.source if result.energy else '?'}, "
            "not measured",
            pytrace=False,
        )
    if found.status == "invalid":
        rules = "; ".join(f"{c.name} {_value(c.value)} (bound {c.bound})" for c in found.failed)
        pytest.fail(f"llem invalid (--llem-require-valid): {rules}", pytrace=False)
