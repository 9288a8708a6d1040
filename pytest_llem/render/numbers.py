"""How figures are printed: with no more digits than they can back.

An estimate (CPU seconds x assumed watts per core) is good to a factor, not to six digits, so
an estimated energy figure is printed with at most 3 significant digits; measured figures keep
4. Every text output (summary, compare, trend, HTML) formats energy through here, and every
output of a comparison (terminal tables, failure message, JUnit properties) its change, interval
and p-value: the human outputs at the table's precision, JUnit at one digit more.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_llem.schema.results import ExperimentResult

ESTIMATE_DIGITS = 3
MEASURED_DIGITS = 4
_UNITS = ((1e6, "MJ"), (1e3, "kJ"), (1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ"))


def significant(value: float, digits: int) -> str:
    """`value` rounded to `digits` significant digits, without exponent for everyday sizes."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    rounded = round(value, digits - 1 - magnitude)
    return f"{rounded:.{decimals}f}"


def energy_text(value_j: float, measured: bool) -> str:
    """An energy in MJ, kJ, J, mJ, µJ or nJ (whichever puts it in [1, 1000)), at most 3 significant
    digits when estimated, 4 when measured: 0.000371234 J estimated -> '371 µJ'."""
    digits = MEASURED_DIGITS if measured else ESTIMATE_DIGITS
    if value_j == 0 or not math.isfinite(value_j):
        return f"{value_j:g} J"
    rounded = float(f"{value_j:.{digits}g}")  # round first: 999.96 mJ becomes 1.000 J
    scale, unit = next(((s, u) for s, u in _UNITS if abs(rounded) >= s), _UNITS[-1])
    return f"{significant(rounded / scale, digits)} {unit}"


def change_text(change_pct: float, decimals: int = 1) -> str:
    """A signed change in percent: '+4.2%'."""
    return f"{change_pct:+.{decimals}f}%"


def interval_text(low: float | None, high: float | None, decimals: int = 3, missing: str = "n/a") -> str:
    """A ratio interval: '0.982-1.031', or `missing` where there is none."""
    if low is None or high is None:
        return missing
    return f"{low:.{decimals}f}-{high:.{decimals}f}"


def p_text(p_value: float | None, digits: int = 3, missing: str = "") -> str:
    """A p-value with `digits` significant digits, or `missing`."""
    return missing if p_value is None else f"{p_value:.{digits}g}"


def status_text(result: ExperimentResult) -> str:
    """The experiment's status, and the test's outcome beside it where the two differ (an
    experiment that passed in a test whose own assertion failed: "passed, test failed")."""
    outcome = result.test_outcome
    if outcome is None or outcome == result.status:
        return result.status
    return f"{result.status}, test {outcome}"
