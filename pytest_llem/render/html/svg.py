"""Static SVG charts, generated in Python: the report needs no script and no network to open.

Every chart is one `<svg class="chart">` whose plotted marks (lines, dots, bars, whiskers)
carry `class="data"`, so a test can count what a browser actually rendered. Every piece of
text goes through `esc`: test ids and model names are user strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from pytest_llem.render.numbers import ESTIMATE_DIGITS, significant

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif"


CHAR_PX = 7.2  # the widest average character width of the 12 px chart font


def shorten(label: str, chars: int) -> str:
    """`label` in at most `chars` characters: the start of a test id and its end (where the
    parameters are), joined by an ellipsis; the whole label goes in a <title> beside it."""
    chars = max(8, chars)
    if len(label) <= chars:
        return label
    head = (chars - 1) // 2
    return label[:head] + "…" + label[len(label) - (chars - 1 - head) :]


def esc(text: object) -> str:
    """Escape for element text and attribute values alike."""
    return escape(str(text), quote=True)


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _fmt(value: float) -> str:
    """Tick label: short, no float noise (0.30000000000000004 -> 0.3)."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2g}"
    return f"{value:.6g}" if magnitude >= 1 else f"{value:.3g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


@dataclass(frozen=True)
class Series:
    """One line: points with None as a gap; `errors` optional (low, high) per point."""

    label: str
    points: Sequence[tuple[float, float | None]]
    errors: Sequence[tuple[float | None, float | None]] = ()
    dashed: bool = False


@dataclass(frozen=True)
class Span:
    """A shaded x range, e.g. a measurement window."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class Interval:
    """One row of an interval chart: a value with an optional 95% interval."""

    label: str
    value: float
    low: float | None = None
    high: float | None = None
    estimated: bool = False


@dataclass
class _Frame:
    """Plot area inside the svg and the data ranges mapped onto it."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    x_ticks: list[float] = field(default_factory=list)
    y_ticks: list[float] = field(default_factory=list)

    x_domain: tuple[float, float] | None = None  # default: first to last tick

    @property
    def x0(self) -> float:
        return self.x_domain[0] if self.x_domain else self.x_ticks[0]

    @property
    def x1(self) -> float:
        return self.x_domain[1] if self.x_domain else self.x_ticks[-1]

    def sx(self, x: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (x - self.x0) / span * (self.width - self.left - self.right)

    def sy(self, y: float) -> float:
        y0, y1 = self.y_ticks[0], self.y_ticks[-1]
        span = (y1 - y0) or 1.0
        return self.height - self.bottom - (y - y0) / span * (self.height - self.top - self.bottom)


def _open(chart_id: str, title: str, width: int, height: int) -> list[str]:
    return [
        f'<svg class="chart" data-chart="{esc(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{esc(title)}" style="{FONT}">',
        f"<title>{esc(title)}</title>",
        f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-size="15" font-weight="600" '
        f'fill="#222">{esc(title)}</text>',
    ]


def _axes(frame: _Frame, x_label: str, y_label: str, x_names: dict[float, str] | None = None) -> list[str]:
    parts = []
    bottom = frame.height - frame.bottom
    for y in frame.y_ticks:
        py = frame.sy(y)
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{py:.1f}" y2="{py:.1f}" '
            'stroke="#e3e3e3"/>'
        )
        parts.append(
            f'<text x="{frame.left - 6}" y="{py + 4:.1f}" text-anchor="end" font-size="12" '
            f'fill="#444">{esc(_fmt(y))}</text>'
        )
    room = max(1, int((frame.width - frame.left - frame.right) / 90))  # labels that fit side by side
    every = max(1, math.ceil(len(frame.x_ticks) / room)) if x_names is not None else 1
    for number, x in enumerate(frame.x_ticks):
        px = frame.sx(x)
        label = x_names.get(x, "") if x_names is not None else _fmt(x)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#888"/>')
        if number % every:
            continue
        lines = "".join(
            f'<tspan x="{px:.1f}" dy="{0 if i == 0 else 13}">{esc(line)}</tspan>'
            for i, line in enumerate(label.split("\n"))
        )
        parts.append(
            f'<text x="{px:.1f}" y="{bottom + 17}" text-anchor="middle" font-size="12" fill="#444">{lines}</text>'
        )
    parts.append(
        f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{bottom}" y2="{bottom}" stroke="#888"/>'
    )
    parts.append(f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{bottom}" stroke="#888"/>')
    middle_x = (frame.left + frame.width - frame.right) / 2
    parts.append(
        f'<text x="{middle_x:.0f}" y="{frame.height - 6}" text-anchor="middle" font-size="13" '
        f'fill="#222">{esc(x_label)}</text>'
    )
    middle_y = (frame.top + bottom) / 2
    parts.append(
        f'<text x="14" y="{middle_y:.0f}" text-anchor="middle" font-size="13" fill="#222" '
        f'transform="rotate(-90 14 {middle_y:.0f})">{esc(y_label)}</text>'
    )
    return parts


def _legend_positions(labels: Sequence[str], left: float, right: float) -> list[tuple[float, int]]:
    """(x, row) of each legend entry, wrapping onto a new row when the next would not fit."""
    positions, cursor, row = [], left, 0
    fit = int((right - left - 36) / CHAR_PX)
    for label in labels:
        entry = 36 + 7 * len(shorten(label, fit))
        if cursor > left and cursor + entry > right:
            cursor, row = left, row + 1
        positions.append((cursor, row))
        cursor += entry
    return positions


def _legend(labels: Sequence[tuple[str, str, bool]], left: float, right: float, y: float) -> list[str]:
    """Legend entries (label, colour, dashed) below the title; a label longer than a row is
    shortened, with the whole name on hover."""
    parts = []
    fit = int((right - left - 36) / CHAR_PX)
    positions = _legend_positions([label for label, _, _ in labels], left, right)
    for (label, stroke, dashed), (x, row) in zip(labels, positions, strict=True):
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        line_y = y + 18 * row
        parts.append(
            f'<line x1="{x:.0f}" x2="{x + 18:.0f}" y1="{line_y:.0f}" y2="{line_y:.0f}" '
            f'stroke="{stroke}" stroke-width="2.5"{dash}/>'
        )
        parts.append(
            f'<text x="{x + 23:.0f}" y="{line_y + 4:.0f}" font-size="12" fill="#333">'
            f"<title>{esc(label)}</title>{esc(shorten(label, fit))}</text>"
        )
    return parts


def line_chart(
    chart_id: str,
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Series],
    spans: Sequence[Span] = (),
    x_names: Sequence[str] | None = None,
    width: int = 640,
    height: int = 280,
    y_zero: bool = True,
) -> str:
    """Lines over x (time, or a categorical index when `x_names` names each integer x).

    `spans` shade x ranges (measurement windows). Single points get a dot so they show.
    """
    xs = [x for s in series for x, y in s.points if y is not None]
    ys = [y for s in series for _, y in s.points if y is not None]
    ys += [v for s in series for pair in s.errors for v in pair if v is not None]
    xs += [v for span in spans for v in (span.start, span.end)]
    legend_rows = 0
    if len(series) > 1:
        legend_rows = 1 + _legend_positions([s.label for s in series], 64, width - 18)[-1][1]
        height += 18 * (legend_rows - 1)
    two_line = x_names is not None and any("\n" in name for name in x_names)
    frame = _Frame(width, height, left=64, right=18, top=34 + 18 * legend_rows, bottom=61 if two_line else 48)
    if x_names is not None:
        frame.x_ticks = [float(i) for i in range(len(x_names))]
        frame.x_domain = (-0.5, len(x_names) - 0.5)  # half a slot of room at each end for the labels
        names = {float(i): name for i, name in enumerate(x_names)}
    else:
        frame.x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0), 6)
        names = None
    y_low = min(ys, default=0.0)
    frame.y_ticks = nice_ticks(min(0.0, y_low) if y_zero else y_low, max(ys, default=1.0), 5)
    parts = _open(chart_id, title, width, height)
    for span in spans:
        x_a, x_b = frame.sx(span.start), frame.sx(span.end)
        parts.append(
            f'<rect class="window" x="{x_a:.1f}" y="{frame.top}" width="{max(1.0, x_b - x_a):.1f}" '
            f'height="{height - frame.top - frame.bottom}" fill="#f2c94c" fill-opacity="0.22">'
            f"<title>{esc(span.label)}: {span.start:.1f}-{span.end:.1f} s</title></rect>"
        )
        for edge in (x_a, x_b):  # back-to-back windows stay distinguishable
            parts.append(
                f'<line x1="{edge:.1f}" x2="{edge:.1f}" y1="{frame.top}" y2="{height - frame.bottom}" '
                'stroke="#c9a227" stroke-width="1" stroke-dasharray="3 3"/>'
            )
        parts.append(
            f'<text x="{(x_a + x_b) / 2:.1f}" y="{height - frame.bottom - 5}" text-anchor="middle" font-size="11" '
            f'fill="#8a6d00">{esc(span.label)}</text>'
        )
    parts += _axes(frame, x_label, y_label, names)
    for index, line in enumerate(series):
        stroke = color(index)
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        segments: list[list[tuple[float, float]]] = [[]]
        for x, y in line.points:
            if y is None:
                segments.append([])
            else:
                segments[-1].append((frame.sx(x), frame.sy(y)))
        for segment in segments:
            if len(segment) > 1:
                d = "M" + " L".join(f"{px:.1f},{py:.1f}" for px, py in segment)
                parts.append(
                    f'<path class="data" d="{d}" fill="none" stroke="{stroke}" stroke-width="2"{dash}>'
                    f"<title>{esc(line.label)}</title></path>"
                )
        show_dots = len(line.points) <= 40
        for point_index, (x, y) in enumerate(line.points):
            if y is None:
                continue
            px, py = frame.sx(x), frame.sy(y)
            if point_index < len(line.errors):
                low, high = line.errors[point_index]
                if low is not None and high is not None:
                    parts.append(
                        f'<line class="data" x1="{px:.1f}" x2="{px:.1f}" y1="{frame.sy(low):.1f}" '
                        f'y2="{frame.sy(high):.1f}" stroke="{stroke}" stroke-width="1.5"/>'
                    )
            isolated = all(
                not 0 <= n < len(line.points) or line.points[n][1] is None
                for n in (point_index - 1, point_index + 1)
            )
            if show_dots or isolated:  # a point with no line through it must still show
                parts.append(
                    f'<circle class="data" cx="{px:.1f}" cy="{py:.1f}" r="3.2" fill="{stroke}">'
                    f"<title>{esc(line.label)}: {esc(_fmt(y))}</title></circle>"
                )
    if legend_rows:
        entries = [(s.label, color(i), s.dashed) for i, s in enumerate(series)]
        parts += _legend(entries, frame.left, width - frame.right, 38)
    parts.append("</svg>")
    return "\n".join(parts)


def interval_chart(
    chart_id: str,
    title: str,
    x_label: str,
    rows: Sequence[Interval],
    width: int = 640,
    label_width: int = 230,
) -> str:
    """Horizontal bars, one per row, with the 95% interval as a whisker. Estimated values are
    drawn hatched and labelled "estimated" beside the bar, so no reader takes them as measured."""
    row_height = 28
    height = 58 + row_height * len(rows) + 34
    frame = _Frame(width, height, left=label_width, right=110, top=34, bottom=46)
    values = [v for row in rows for v in (row.value, row.low, row.high) if v is not None]
    frame.x_ticks = nice_ticks(0.0, max(values, default=1.0), 5)
    frame.y_ticks = [0.0, 1.0]
    parts = _open(chart_id, title, width, height)
    parts.append(
        '<defs><pattern id="hatch-' + esc(chart_id) + '" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fbe3c8"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#e08a2c" stroke-width="2.5"/></pattern></defs>'
    )
    bottom = height - frame.bottom
    for x in frame.x_ticks:
        px = frame.sx(x)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{frame.top}" y2="{bottom}" stroke="#e3e3e3"/>')
        parts.append(
            f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="12" fill="#444">'
            f"{esc(_fmt(x))}</text>"
        )
    parts.append(f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{bottom}" stroke="#888"/>')
    parts.append(
        f'<text x="{(frame.left + width - frame.right) / 2:.0f}" y="{height - 8}" text-anchor="middle" '
        f'font-size="13" fill="#222">{esc(x_label)}</text>'
    )
    for index, row in enumerate(rows):
        y = frame.top + 8 + index * row_height
        bar_end = frame.sx(row.value)
        fill = f"url(#hatch-{esc(chart_id)})" if row.estimated else color(0)
        label = shorten(row.label, int((frame.left - 12) / CHAR_PX))
        parts.append(
            f'<text x="{frame.left - 8}" y="{y + 14}" text-anchor="end" font-size="12" fill="#222">'
            f"<title>{esc(row.label)}</title>{esc(label)}</text>"
        )
        parts.append(
            f'<rect class="data" x="{frame.left}" y="{y + 3}" width="{max(1.0, bar_end - frame.left):.1f}" '
            f'height="{row_height - 10}" fill="{fill}" stroke="{"#e08a2c" if row.estimated else "none"}">'
            f"<title>{esc(row.label)}: {esc(_fmt(row.value))}</title></rect>"
        )
        if row.low is not None and row.high is not None:
            x_a, x_b, mid = frame.sx(row.low), frame.sx(row.high), y + row_height / 2 - 2
            parts.append(
                f'<path class="data" d="M{x_a:.1f},{mid - 6:.1f} V{mid + 6:.1f} M{x_a:.1f},{mid:.1f} '
                f'H{x_b:.1f} M{x_b:.1f},{mid - 6:.1f} V{mid + 6:.1f}" stroke="#222" stroke-width="1.5" '
                f'fill="none"><title>95% interval {esc(_fmt(row.low))} to {esc(_fmt(row.high))}</title></path>'
            )
        note = significant(row.value, ESTIMATE_DIGITS) + " estimated" if row.estimated else f"{row.value:.4g}"
        text_x = max(bar_end, frame.sx(row.high) if row.high is not None else bar_end) + 6
        parts.append(
            f'<text x="{text_x:.1f}" y="{y + 14}" font-size="12" '
            f'fill="{"#b25d00" if row.estimated else "#222"}">{esc(note)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


@dataclass(frozen=True)
class Point:
    """One experiment in a scatter: where it lies and what to call it."""

    label: str
    x: float
    y: float


def pareto_front(points: Sequence[Point], higher_x_better: bool = False) -> list[int]:
    """Indexes of the points no other point beats on both axes (lower y is better: less energy
    per token; lower x too - less time - unless `higher_x_better`, as for throughput), in
    order of x."""
    sign = -1.0 if higher_x_better else 1.0
    order = sorted(range(len(points)), key=lambda i: (sign * points[i].x, points[i].y))
    front: list[int] = []
    best_y = float("inf")
    for index in order:
        if points[index].y < best_y:
            front.append(index)
            best_y = points[index].y
    return sorted(front, key=lambda i: points[i].x)


def pareto_chart(
    chart_id: str,
    title: str,
    x_label: str,
    y_label: str,
    points: Sequence[Point],
    width: int = 640,
    height: int = 320,
    higher_x_better: bool = False,
) -> str:
    """A scatter with the Pareto front drawn as a step line through its points (filled);
    points off the front are hollow. Each point is labelled (e.g. its power limit)."""
    front = pareto_front(points, higher_x_better)
    frame = _Frame(width, height, left=64, right=24, top=34, bottom=48)
    xs, ys = [p.x for p in points], [p.y for p in points]
    frame.x_ticks = nice_ticks(min(xs), max(xs), 5)
    frame.y_ticks = nice_ticks(0.0, max(ys), 5)
    parts = _open(chart_id, title, width, height)
    parts += _axes(frame, x_label, y_label)
    if len(front) > 1:
        path = " ".join(
            f"{'M' if k == 0 else 'L'}{frame.sx(points[i].x):.1f},{frame.sy(points[i].y):.1f}"
            for k, i in enumerate(front)
        )
        parts.append(
            f'<path class="pareto-front" d="{path}" stroke="{color(1)}" stroke-width="2" fill="none"/>'
        )
    for index, point in enumerate(points):
        on_front = index in front
        px, py = frame.sx(point.x), frame.sy(point.y)
        fill = color(1) if on_front else "#fff"
        parts.append(
            f'<circle class="data{" pareto" if on_front else ""}" cx="{px:.1f}" cy="{py:.1f}" r="4.5" '
            f'fill="{fill}" stroke="{color(1)}" stroke-width="1.5"><title>{esc(point.label)}: '
            f"{esc(_fmt(point.x))}, {esc(_fmt(point.y))}{' (Pareto front)' if on_front else ''}</title></circle>"
        )
        label = shorten(point.label, 24)
        fits = px + 7 + len(label) * CHAR_PX * 11 / 12 <= width - 4  # else to the point's left
        anchor = f'x="{px + 7:.1f}"' if fits else f'x="{px - 7:.1f}" text-anchor="end"'
        parts.append(f'<text {anchor} y="{py - 6:.1f}" font-size="11" fill="#222">{esc(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
