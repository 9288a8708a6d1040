"""An experiment's power/thermal timeseries, read back from its Parquet file for plotting.

Measurement windows are marked from whatever the file records: explicit window boundaries
(`window_start_s`/`window_end_s`), else the extent of each repeat's rows (`repeat_index`);
an older file with neither is plotted without windows, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llem.render.html.svg import Series, Span
from pytest_llem.schema.results import ExperimentResult

METRICS = (
    ("power_w", "Power", "power (W)"),
    ("temperature_c", "Temperature", "temperature (°C)"),
    ("sm_utilisation_pct", "SM utilisation", "utilisation (%)"),
)
_REPEAT_COLUMNS = ("repeat_index", "repeat")


@dataclass(frozen=True)
class Timeseries:
    rows: list[dict[str, Any]]
    windows: list[Span]
    windows_note: str | None

    def series(self, column: str) -> list[Series]:
        """One line per GPU. Seconds without a value are gaps, not zeros, and each window is its
        own stretch of line: nothing was sampled between two windows, so nothing is drawn there."""
        by_gpu: dict[int, list[tuple[float, int, float | None]]] = {}
        for row in self.rows:
            repeat, value = _repeat_of(row), row.get(column)
            known = value is not None and math.isfinite(value)  # NaN would break the SVG path
            by_gpu.setdefault(int(row.get("gpu_index") or 0), []).append(
                (float(row["timestamp_s"]), -1 if repeat is None else repeat, value if known else None)
            )
        series = []
        for gpu, rows in sorted(by_gpu.items()):
            rows.sort(key=lambda row: (row[1], row[0]))
            points: list[tuple[float, float | None]] = []
            for index, (t, repeat, value) in enumerate(rows):
                if index and repeat != rows[index - 1][1]:
                    points.append((t, None))  # a new window: break the line
                points.append((t, value))
            if any(value is not None for _, value in points):
                series.append(Series(f"GPU {gpu}", points))
        return series


def _repeat_of(row: dict[str, Any]) -> int | None:
    for column in _REPEAT_COLUMNS:
        value = row.get(column)
        if value is not None:
            return int(value)
    return None


def windows_from_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[Span], str | None]:
    """Measurement windows as shaded spans, and a note when the file does not record them."""
    explicit: dict[tuple[float, float], int | None] = {}
    extents: dict[int, tuple[float, float]] = {}
    for row in rows:
        start, end, repeat = row.get("window_start_s"), row.get("window_end_s"), _repeat_of(row)
        if start is not None and end is not None:
            explicit.setdefault((float(start), float(end)), repeat)
        if repeat is not None:
            t = float(row["timestamp_s"])
            low, high = extents.get(repeat, (t, t))
            extents[repeat] = (min(low, t), max(high, t + 1.0))
    if explicit:
        ordered = sorted(explicit.items())
        return [
            Span(start, end, f"r{repeat if repeat is not None else index}")
            for index, ((start, end), repeat) in enumerate(ordered)
        ], None
    if extents:
        spans = [Span(low, high, f"r{repeat}") for repeat, (low, high) in sorted(extents.items())]
        return spans, "windows drawn from the seconds each repeat's samples cover"
    return [], "this timeseries does not record window boundaries"


def load_timeseries(result: ExperimentResult, report_dir: Path) -> tuple[Timeseries | None, str | None]:
    """The experiment's timeseries, or None with the reason it cannot be shown."""
    if not result.timeseries_path:
        return None, "no timeseries recorded (the sampler reads GPUs; CPU runs have none)"
    path = Path(result.timeseries_path)
    if not path.is_absolute():
        path = report_dir / path
    try:
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as exc:
        return None, f"timeseries {path} cannot be read: {exc}"
    if not rows:
        return None, f"timeseries {path} has no rows"
    windows, note = windows_from_rows(rows)
    return Timeseries(rows, windows, note), None
