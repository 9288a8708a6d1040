"""The terminal summary table (rich), one row per experiment."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pytest_llem.render.numbers import energy_text, significant, status_text
from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult


def _energy_cell(result: ExperimentResult) -> str:
    if result.validity is not None and result.validity.status == "invalid":
        return "invalid: " + ", ".join(c.name for c in result.validity.failed)
    if result.energy_per_output_token_j is None:
        return "-" if result.status == "passed" else ""
    measured = result.energy is not None and result.energy.measured
    return f"{energy_text(result.energy_per_output_token_j, measured)} ({result.energy_label})"


def _emissions_cell(result: ExperimentResult) -> str:
    """Grams CO2e per output token, 3 significant digits: always derived, never measured."""
    if result.emissions is None:
        return ""
    return f"{significant(result.emissions.g_co2e_per_output_token * 1000, 3)} mg"


def _ttft_cell(result: ExperimentResult) -> str:
    """Median time to first token; '(batch)' where the engine's times are the batch's."""
    latency = result.latency
    if latency is None or latency.ttft_s is None:
        return ""
    scope = " (batch)" if latency.scope == "batch" else ""
    return f"{latency.ttft_s.p50 * 1000:.1f} ms{scope}"


def report_lines(report_path: Path) -> list[str]:
    """Where the session's report went, each file named as what it is."""
    from pytest_llem.store.report import PARQUET_NAME

    return [
        f"llem JSON report: {report_path}",
        f"llem Parquet table: {report_path.parent / PARQUET_NAME}",
    ]


def summary_table(results: Sequence[ExperimentResult], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column, justify in (
        ("test", "left"),
        ("model", "left"),
        ("engine", "left"),
        ("bs", "right"),
        ("dtype", "left"),
        ("status", "left"),
        ("tok/s", "right"),
        ("TTFT p50", "right"),
        ("energy/out-token", "right"),
        ("warnings", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    with_emissions = any(result.emissions is not None for result in results)
    if with_emissions:
        table.add_column("CO2e/out-token", justify="right", overflow="fold")
    for result in results:
        emissions = [_emissions_cell(result)] if with_emissions else []
        table.add_row(
            escape(result.nodeid.split("::", 1)[-1]),
            result.config.model,
            result.engine or result.config.engine,
            str(result.config.batch_size),
            result.weights,
            escape(status_text(result) + (f": {result.error[:60]}" if result.error else "")),
            f"{result.tokens_per_second:.1f}" if result.status == "passed" else "",
            _ttft_cell(result),
            _energy_cell(result),
            ", ".join(dict.fromkeys(result.warning_flags)),
            *emissions,
        )
    return table


def table_text(table: Table, width: int) -> str:
    """A rich table as plain text (no colour codes), for the terminal summary, logs and files."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


def render_summary(results: Sequence[ExperimentResult], title: str, width: int = 140) -> str:
    return table_text(summary_table(results, title), width)


def figure_line(figure: BenchmarkFigure) -> str:
    """One line per recorded benchmark figure: value, target and whether it was met (a
    figure never fails the session)."""
    name = figure.nodeid.split("::", 1)[-1]
    text = f"figure {name}: {figure.name} = {figure.value:.4g}{(' ' + figure.unit) if figure.unit else ''}"
    if figure.target is not None:
        text += (
            f" (target {figure.target}: {'met' if figure.target_met else 'NOT met'}; recorded, not asserted)"
        )
    return text + (f" - {figure.detail}" if figure.detail else "")
