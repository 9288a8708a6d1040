"""The report page: one self-contained HTML file (inline CSS and SVG, no script, no network).

Sections: the run, a summary table, charts across experiments (J/token, tokens/s, latency,
FLOPs), the trend across stored runs, one section per experiment with its timeseries and the
measurement windows marked, all warnings, and the environment. Every estimated energy figure
is hatched in charts and badged "estimated" in tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from pytest_llem.render.html.svg import Interval, Point, Series, interval_chart, line_chart, pareto_chart
from pytest_llem.render.html.timeseries import METRICS, load_timeseries
from pytest_llem.render.numbers import ESTIMATE_DIGITS, MEASURED_DIGITS, significant, status_text
from pytest_llem.render.trend import TrendPoint, TrendRun, trend_points
from pytest_llem.schema.results import ExperimentResult, SessionReport, Stats

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;
  color:#1d1d1f;background:#f6f7f9;font-size:15px;line-height:1.45}
main{max-width:1340px;margin:0 auto;padding:18px 28px 40px}
h1{font-size:26px;margin:6px 0 4px}h2{font-size:20px;margin:30px 0 10px;border-bottom:2px solid #dde1e6;
  padding-bottom:4px}h3{font-size:17px;margin:22px 0 6px}
.meta{color:#555;margin:0 0 8px}.meta b{color:#1d1d1f}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:13.5px}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:14px}.charts svg{background:#fff;border:1px solid #dde1e6;
  border-radius:6px}
.badge{display:inline-block;border-radius:9px;padding:0 7px;font-size:12px;font-weight:600;margin-left:4px}
.est{background:#fbe3c8;color:#8a4700;border:1px solid #e08a2c}.meas{background:#dff3e4;color:#1c6b33}
.fail{background:#fde2e1;color:#a4161a}.note{color:#666;font-style:italic;margin:4px 0}
.experiment{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:4px 16px 12px;margin:14px 0}
.experiment .charts svg{border-color:#eef1f5}
code{font-size:13px;background:#eef1f5;padding:0 3px;border-radius:3px}td code{white-space:nowrap}
details summary{cursor:pointer;color:#333}
.scroll{max-width:100%;overflow-x:auto}.charts svg{max-width:100%;height:auto}
"""


def _test_name(nodeid: str) -> str:
    return nodeid.split("::", 1)[-1]


def _energy_scale(values: Sequence[float]) -> tuple[float, str]:
    """Scale and unit that keep J/token figures readable (J, mJ or µJ)."""
    top = max((abs(v) for v in values), default=1.0)
    if top >= 1:
        return 1.0, "J"
    if top >= 1e-3:
        return 1e3, "mJ"
    return 1e6, "µJ"


def _num(value: float | None, digits: int = 3, scale: float = 1.0) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}"


def _ci(stats: Stats | None, scale: float, digits: int) -> str:
    if stats is None or stats.ci95_low is None or stats.ci95_high is None:
        return ""
    return f" [{stats.ci95_low * scale:.{digits}f}, {stats.ci95_high * scale:.{digits}f}]"


def _energy(value: float | None, scale: float, measured: bool) -> str:
    """An energy figure with no more digits than it can back (figures.py): 3 significant digits
    when estimated, 4 when measured."""
    if value is None or not math.isfinite(value):
        return "-"
    return significant(value * scale, MEASURED_DIGITS if measured else ESTIMATE_DIGITS)


def _energy_ci(stats: Stats | None, scale: float, measured: bool) -> str:
    if stats is None or stats.ci95_low is None or stats.ci95_high is None:
        return ""
    return f" [{_energy(stats.ci95_low, scale, measured)}, {_energy(stats.ci95_high, scale, measured)}]"


def _interval(
    label: str, value: float, stats: Stats | None, scale: float, estimated: bool = False
) -> Interval:
    low = stats.ci95_low * scale if stats and stats.ci95_low is not None else None
    high = stats.ci95_high * scale if stats and stats.ci95_high is not None else None
    return Interval(label, value * scale, low, high, estimated)


def _sweep_points(passed: Sequence[ExperimentResult], scale: float) -> list[Point]:
    """A power-limit or clock sweep's experiments (two or more with J/token and TPOT), each
    labelled with its setting, for the Pareto chart; [] when the run has no sweep."""
    swept = [
        r
        for r in passed
        if (r.config.power_limit_w is not None or r.config.gpu_clocks_mhz is not None)
        and r.energy_per_output_token_j is not None
        and r.time_per_output_token_s is not None
    ]
    if len(swept) < 2:
        return []
    points = []
    for r in swept:
        setting = " ".join(
            part
            for part in (
                f"{r.config.power_limit_w:g} W" if r.config.power_limit_w is not None else "",
                f"{r.config.gpu_clocks_mhz} MHz" if r.config.gpu_clocks_mhz is not None else "",
            )
            if part
        )
        assert r.time_per_output_token_s is not None and r.energy_per_output_token_j is not None
        points.append(
            Point(
                f"{setting} {_test_name(r.nodeid)}",
                r.time_per_output_token_s * 1e3,
                r.energy_per_output_token_j * scale,
            )
        )
    return points


def _served_sweep(passed: Sequence[ExperimentResult], scale: float, unit: str) -> list[str]:
    """A served load swept over request_rate or concurrency (two or more served experiments
    with J/token): J per output token against output throughput and against TTFT p90, each
    point labelled with its load; [] otherwise."""
    swept = [r for r in passed if r.served is not None and r.energy_per_output_token_j is not None]
    if len(swept) < 2:
        return []

    def load(r: ExperimentResult) -> str:
        assert r.served is not None
        rate = "inf" if r.served.request_rate is None else f"{r.served.request_rate:g}"
        return f"{rate} req/s, concurrency {r.served.concurrency} {_test_name(r.nodeid)}"

    per_token = {id(r): (r.energy_per_output_token_j or 0.0) * scale for r in swept}
    throughput = [Point(load(r), r.tokens_per_second, per_token[id(r)]) for r in swept]
    charts = [
        pareto_chart(
            "served-sweep",
            "Served load: energy per token against throughput (line: Pareto front)",
            "output tokens per second",
            f"{unit} per output token",
            throughput,
            higher_x_better=True,
        )
    ]
    ttft = [
        Point(load(r), r.latency.ttft_s.p90 * 1e3, per_token[id(r)])
        for r in swept
        if r.latency is not None and r.latency.ttft_s is not None
    ]
    if len(ttft) >= 2:
        charts.append(
            pareto_chart(
                "served-ttft",
                "Served load: energy per token against TTFT p90 (line: Pareto front)",
                "time to first token, p90 (ms)",
                f"{unit} per output token",
                ttft,
            )
        )
    return charts


def _across(results: Sequence[ExperimentResult], scale: float, unit: str) -> list[Markup]:
    passed = [r for r in results if r.status == "passed"]
    charts = []
    energy_rows = [
        _interval(
            _test_name(r.nodeid),
            r.energy_per_output_token_j,
            r.stats.get("energy_per_output_token_j"),
            scale,
            r.energy_label == "estimated",
        )
        for r in passed
        if r.energy_per_output_token_j is not None
    ]
    if energy_rows:
        estimated = any(row.estimated for row in energy_rows)
        title = "Energy per output token" + (" (hatched: estimated)" if estimated else "")
        charts.append(
            interval_chart(
                "energy-per-token",
                title,
                f"{unit} per output token (bar: mean, whisker: 95% CI)",
                energy_rows,
            )
        )
    speed_rows = [
        _interval(_test_name(r.nodeid), r.tokens_per_second, r.stats.get("tokens_per_second"), 1.0)
        for r in passed
    ]
    if speed_rows:
        charts.append(
            interval_chart(
                "tokens-per-second", "Throughput", "output tokens per second (whisker: 95% CI)", speed_rows
            )
        )
    prefill = [Interval(_test_name(r.nodeid), r.prefill_s * 1e3) for r in passed if r.prefill_s is not None]
    if prefill:
        charts.append(interval_chart("prefill", "Latency: mean time to first token", "milliseconds", prefill))
    tpot = [
        Interval(_test_name(r.nodeid), r.time_per_output_token_s * 1e3)
        for r in passed
        if r.time_per_output_token_s is not None
    ]
    if tpot:
        charts.append(interval_chart("tpot", "Latency: time per output token", "milliseconds", tpot))
    sweep = _sweep_points(passed, scale)
    if sweep:
        charts.append(
            pareto_chart(
                "pareto",
                "Energy per token against time per output token (line: Pareto front)",
                "time per output token (ms)",
                f"{unit} per output token",
                sweep,
            )
        )
    charts.extend(_served_sweep(passed, scale, unit))
    flops = [Interval(_test_name(r.nodeid), r.flops.flops_per_output_token / 1e9) for r in passed if r.flops]
    if flops:
        charts.append(
            interval_chart("flops", "FLOPs per output token (2·N·tokens)", "GFLOP per output token", flops)
        )
    return [Markup(chart) for chart in charts]


def _trend(runs: Sequence[TrendRun], points: Sequence[TrendPoint]) -> list[Markup]:
    names = [run.label for run in runs]
    index = {(run.name, run.created_at): i for i, run in enumerate(runs)}
    by_test: dict[str, list[TrendPoint]] = {}
    for point in points:
        by_test.setdefault(point.nodeid, []).append(point)
    energies = [p.energy_per_output_token_j for p in points if p.energy_per_output_token_j is not None]
    scale, unit = _energy_scale(energies)
    energy_series, speed_series = [], []
    estimated = False
    for nodeid, series in by_test.items():
        xs = [float(index[(p.run.name, p.run.created_at)]) for p in series]
        is_estimated = any(p.energy_label == "estimated" for p in series)
        estimated = estimated or is_estimated
        energy_points = [
            (x, p.energy_per_output_token_j * scale if p.energy_per_output_token_j is not None else None)
            for x, p in zip(xs, series, strict=True)
        ]
        if any(y is not None for _, y in energy_points):
            energy_series.append(
                Series(
                    _test_name(nodeid) + (" (estimated)" if is_estimated else ""),
                    energy_points,
                    [
                        (lo * scale if lo is not None else None, hi * scale if hi is not None else None)
                        for lo, hi in (p.energy_ci95 for p in series)
                    ],
                    dashed=is_estimated,
                )
            )
        speed_series.append(
            Series(
                _test_name(nodeid),
                [(x, p.tokens_per_second) for x, p in zip(xs, series, strict=True)],
                [p.tokens_per_second_ci95 for p in series],
            )
        )
    width = max(640, min(1280, 110 * len(runs)))
    charts = []
    if energy_series:
        title = "Energy per output token across runs" + (" (dashed: estimated)" if estimated else "")
        charts.append(
            line_chart(
                "trend-energy",
                title,
                "run (commit, created UTC)",
                f"{unit} per output token",
                energy_series,
                x_names=names,
                width=width,
            )
        )
    charts.append(
        line_chart(
            "trend-speed",
            "Throughput across runs",
            "run (commit, created UTC)",
            "output tokens per second",
            speed_series,
            x_names=names,
            width=width,
        )
    )
    return [Markup(chart) for chart in charts]


def _status(result: ExperimentResult) -> dict[str, str]:
    shown = status_text(result)
    return {
        "status": result.status,
        "outcome": shown.removeprefix(result.status).lstrip(", "),
        "error": result.error or "",
    }


def _experiment(
    result: ExperimentResult, position: int, report_dir: Path, scale: float, unit: str
) -> dict[str, Any]:
    """One experiment's section: its facts, repeats and timeseries charts."""
    info = result.energy
    facts = [
        ("model", f"{result.config.model} ({result.model_source or 'unresolved'})"),
        ("engine / device", f"{result.engine or result.config.engine} / {result.device or '-'}"),
        (
            "settings",
            f"weights {result.weights}, batch {result.config.batch_size}, "
            f"{result.config.n_prompts} prompts × {result.config.max_new_tokens} new tokens per pass, "
            f"{result.window_passes} pass{'es' if result.window_passes != 1 else ''} per window, "
            f"{len(result.repeats)} window{'s' if len(result.repeats) != 1 else ''}",
        ),
        (
            "energy",
            f"{info.source}, {info.method}, {'measured' if info.measured else 'estimated'}" if info else "-",
        ),
        ("baseline power", "-" if result.baseline_power_w is None else f"{result.baseline_power_w:.2f} W"),
    ]
    if info and info.assumptions:
        facts.append(("assumptions", ", ".join(f"{k}={_figure(v)}" for k, v in info.assumptions.items())))
    if result.flops:
        facts.append(("FLOPs", f"{result.flops.method}, confidence {result.flops.confidence}"))
    if result.validity is not None:
        failed = "; ".join(f"{c.name}: {_figure(c.value)} (bound {c.bound})" for c in result.validity.failed)
        facts.append(("validity", result.validity.status + (f" - {failed}" if failed else "")))
    measured = result.energy_label == "measured"
    facts.extend(_parts(result, measured))
    repeats = [
        [
            r.index,
            _num(r.window_s, 3),
            r.output_tokens,
            _energy(r.energy_j, 1.0, measured),
            _energy(r.energy_per_output_token_j, scale, measured),
            _num(r.tokens_per_second, 1),
        ]
        for r in result.repeats
    ]
    section: dict[str, Any] = {
        "nodeid": result.nodeid,
        "label": result.energy_label,
        "facts": facts,
        "status": _status(result),
        "repeats": repeats,
        "repeat_headers": ("repeat", "window, s", "output tokens", "energy, J", f"{unit}/token", "tokens/s"),
        "timeseries_note": None,
        "not_recorded": [],
        "charts": [],
        "windows_note": None,
    }
    timeseries, reason = load_timeseries(result, report_dir)
    if timeseries is None:
        section["timeseries_note"] = reason
        return section
    for column, title, axis in METRICS:
        series = timeseries.series(column)
        if not series:
            section["not_recorded"].append(title)
            continue
        chart = line_chart(
            f"exp-{position}-{column}",
            f"{title} (shaded: measurement windows)" if timeseries.windows else title,
            "time since first sample (s)",
            axis,
            series,
            timeseries.windows,
            width=400,
            height=260,
        )
        section["charts"].append(Markup(chart))
    section["windows_note"] = timeseries.windows_note
    return section


def _parts(result: ExperimentResult, measured: bool) -> list[tuple[str, str]]:
    """The leaderboard figures, prefill/decode and the steady state, as fact lines (a part
    without energy says why: docs/metrics.md)."""
    facts: list[tuple[str, str]] = []
    if result.energy_per_request_j is not None:
        facts.append(
            (
                "per token and request",
                f"{_energy(result.energy_per_input_token_j, 1.0, measured)} J/input token, "
                f"{_energy(result.energy_per_total_token_j, 1.0, measured)} J/total token, "
                f"{_energy(result.energy_per_request_j, 1.0, measured)} J/request, "
                f"{_energy(result.average_power_w, 1.0, measured)} W average, "
                f"{_energy(result.output_tokens_per_joule, 1.0, measured)} output tokens/J",
            )
        )
    phases = result.phases
    if phases is not None:
        prefill = (
            f"{_energy(phases.prefill_energy_per_input_token_j, 1.0, measured)} J/input token"
            if phases.prefill_null_reason is None
            else f"no energy: {phases.prefill_null_reason}"
        )
        decode = (
            f"{_energy(phases.decode_energy_per_output_token_j, 1.0, measured)} J/output token"
            if phases.decode_null_reason is None
            else f"no energy: {phases.decode_null_reason}"
        )
        facts.append(
            (
                "prefill / decode",
                f"total prefill time {_num(phases.prefill_s, 3)} s, {prefill}; "
                f"decode {_num(phases.decode_s, 3)} s, {phases.decode_output_tokens} tokens, {decode}",
            )
        )
    steady = result.steady_state
    if steady is not None:
        if steady.seconds is None:
            text = steady.null_reason or "-"
        else:
            energy = (
                f"{_energy(steady.energy_per_output_token_j, 1.0, measured)} J/output token, "
                f"{_energy(steady.average_power_w, 1.0, measured)} W"
                if steady.null_reason is None
                else f"no energy: {steady.null_reason}"
            )
            text = (
                f"{_num(steady.seconds, 3)} s of {_num(result.window_s * len(result.repeats), 3)} s measured, "
                f"{steady.output_tokens} tokens, {_num(steady.tokens_per_second, 1)} tokens/s, {energy}"
            )
        facts.append((f"steady state (max_num_seqs {steady.max_num_seqs})", text))
    return facts


def _figure(value: object) -> str:
    """A recorded value (a warning's value or threshold, an assumption): floats to 4 significant
    digits, anything else as it is."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _warnings(results: Sequence[ExperimentResult]) -> list[dict[str, str]]:
    return [
        {
            "test": _test_name(r.nodeid),
            "flag": w.flag,
            "message": w.message,
            "value": _figure(w.value),
            "threshold": _figure(w.threshold),
            "remedy": w.remedy,
        }
        for r in results
        for w in r.warnings
    ]


def _environment(report: SessionReport) -> list[tuple[str, str]]:
    env = report.environment
    rows = [
        ("pytest-llem", env.tool_version),
        ("python", env.python),
        ("platform", env.platform),
        ("CPU", f"{env.cpu_model or '-'} ({env.cpu_count or '?'} logical cores)"),
        ("torch / transformers", f"{env.torch_version or '-'} / {env.transformers_version or '-'}"),
        ("CUDA", f"{env.cuda_version or '-'} (from {env.cuda_version_source})"),
        ("driver", env.driver_version or "-"),
        ("git", f"{env.git_commit or '-'}{' (dirty)' if env.git_dirty else ''}"),
        ("machine fingerprint", report.fingerprint or "-"),
    ]
    for gpu in env.gpus:
        rows.append(
            (
                f"GPU {gpu.index}",
                f"{gpu.name or '?'}, {_num(gpu.memory_total_mb, 0)} MB, power limit "
                f"{_num(gpu.power_limit_w, 0)} W, persistence {gpu.persistence_mode}",
            )
        )
    return rows


def _summary(results: Sequence[ExperimentResult], scale: float) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        energy = r.stats.get("energy_per_output_token_j")
        speed = r.stats.get("tokens_per_second")
        measured = r.energy_label == "measured"
        rows.append(
            {
                "name": _test_name(r.nodeid),
                "model": r.config.model,
                "dtype": r.weights,
                "batch": r.config.batch_size,
                "device": r.device or "-",
                **_status(r),
                "speed": f"{_num(r.tokens_per_second, 1)}{_ci(speed, 1.0, 1)}"
                if r.status == "passed"
                else "-",
                "energy": (
                    f"{_energy(r.energy_per_output_token_j, scale, measured)}{_energy_ci(energy, scale, measured)}"
                    if r.energy_per_output_token_j is not None
                    else ""
                ),
                "label": r.energy_label,
                "source": r.energy.source if r.energy else "-",
                "prefill": _num(r.prefill_s, 1, 1e3),
                "tpot": _num(r.time_per_output_token_s, 2, 1e3),
                "gflop": _num(r.flops.flops_per_output_token / 1e9 if r.flops else None, 3),
                "warnings": len(r.warnings),
            }
        )
    return rows


def render_page(
    report: SessionReport,
    report_dir: Path,
    history: Sequence[tuple[str, SessionReport]] = (),
) -> str:
    """The whole page as a string, from the Jinja2 template `templates/report.html.j2` with
    autoescape on. `history`: stored runs for the trend (this run may be among them; copies
    count once); the trend shows when there are at least two runs."""
    from jinja2 import Environment, PackageLoader

    results = report.experiments
    energies = [r.energy_per_output_token_j for r in results if r.energy_per_output_token_j is not None]
    scale, unit = _energy_scale(energies)
    env = report.environment
    runs, points = trend_points([*history, (report.run_id or "this run", report)])
    templates = Environment(loader=PackageLoader("pytest_llem.render.html", "templates"), autoescape=True)
    return (
        templates.get_template("report.html.j2").render(
            title=f"pytest-llem report {report.run_id or ''}".strip(),
            css=Markup(CSS),
            created=report.created_at,
            commit=(env.git_commit or "no git")[:12] + (" (dirty)" if env.git_dirty else ""),
            experiments=results,
            tool_version=report.tool_version,
            cpu=env.cpu_model or "-",
            gpu_count=len(env.gpus),
            estimated=any(r.energy_label == "estimated" for r in results),
            summary_headers=(
                "test",
                "model",
                "dtype",
                "batch",
                "device",
                "status",
                "tokens/s [95% CI]",
                f"energy per output token, {unit} [95% CI]",
                "energy source",
                "mean TTFT, ms",
                "time per output token, ms",
                "GFLOP per output token",
                "warnings",
            ),
            summary=_summary(results, scale),
            across=_across(results, scale, unit),
            trend=_trend(runs, points) if len(runs) > 1 else [],
            trend_runs=len(runs),
            experiment_sections=[_experiment(r, i, report_dir, scale, unit) for i, r in enumerate(results)],
            warnings=_warnings(results),
            environment=_environment(report),
            packages=sorted(env.packages.items()),
        )
        + "\n"
    )
