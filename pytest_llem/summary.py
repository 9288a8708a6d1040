"""The terminal summary table (rich), one row per experiment."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pytest_llem.results import ExperimentResult


def _energy_cell(result: ExperimentResult) -> str:
    if result.energy_per_output_token_j is None:
        return "-" if result.status == "passed" else ""
    value = result.energy_per_output_token_j
    return f"{value * 1000:.3f} mJ ({result.energy_label})"


def summary_table(results: Sequence[ExperimentResult], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column, justify in (
        ("test", "left"),
        ("model", "left"),
        ("bs", "right"),
        ("dtype", "left"),
        ("status", "left"),
        ("tok/s", "right"),
        ("energy/out-token", "right"),
        ("warnings", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for result in results:
        table.add_row(
            escape(result.nodeid.split("::", 1)[-1]),
            result.config.model,
            str(result.config.batch_size),
            result.config.dtype,
            escape(result.status if not result.error else f"{result.status}: {result.error[:60]}"),
            f"{result.tokens_per_second:.1f}" if result.status == "passed" else "",
            _energy_cell(result),
            ", ".join(dict.fromkeys(result.warning_flags)),
        )
    return table


def render_summary(results: Sequence[ExperimentResult], title: str, width: int = 140) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    console.print(summary_table(results, title))
    return buffer.getvalue()
