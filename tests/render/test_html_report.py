"""The HTML report: built from hand-made results (exact, no timing), opened in headless Chromium.

The Chromium test fails on any console message, checks that every chart in the page rendered
with data marks, and saves a screenshot. It is skipped only where no Chromium is installed
(`.ci/run` installs Debian's package).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import simulated_settings

from pytest_llem.hardware.sampler import TIMESERIES_COLUMNS
from pytest_llem.render.html import render_page, write_html_report
from pytest_llem.render.html.chromium import check_page, count_charts, find_chromium
from pytest_llem.render.html.svg import Series, line_chart, nice_ticks
from pytest_llem.render.html.timeseries import Timeseries, windows_from_rows
from pytest_llem.schema.config import build_config
from pytest_llem.schema.environment import EnvironmentSnapshot, GpuInfo
from pytest_llem.schema.results import (
    EnergyInfo,
    ExperimentResult,
    FlopsResult,
    MeasurementWarning,
    RepeatResult,
    SessionReport,
    Stats,
    SteadyState,
)

pytest_plugins = ["pytester"]

HOSTILE = "test_x[<script>alert('x')</script>&\"q\"]"
REPO = Path(__file__).resolve().parents[2]


def _stats(mean: float, half: float) -> Stats:
    return Stats(
        n=3, mean=mean, std=half / 2, cv=half / 2 / mean, ci95_low=mean - half, ci95_high=mean + half
    )


def _repeats(window_s: float, tokens: int, energy_j: float | None) -> list[RepeatResult]:
    return [
        RepeatResult(
            index=i,
            window_s=window_s,
            output_tokens=tokens,
            input_tokens=40,
            energy_j=energy_j,
            tokens_per_second=tokens / window_s,
            energy_per_output_token_j=energy_j / tokens if energy_j is not None else None,
            prefill_s=0.02,
            time_per_output_token_s=0.004,
        )
        for i in range(3)
    ]


def _result(nodeid: str, **fields: Any) -> ExperimentResult:
    config = build_config(("test", {"model": "tiny", "batch_size": fields.pop("batch_size", 1)}))
    values: dict[str, Any] = {
        "nodeid": nodeid,
        "status": "passed",
        "config": config,
        "config_hash": config.config_hash(),
        "device": "cpu",
        "output_tokens": 256,
        "requested_output_tokens": 256,
        "window_s": 4.0,
        "tokens_per_second": 64.0,
        "prefill_s": 0.02,
        "time_per_output_token_s": 0.004,
        "stats": {"tokens_per_second": _stats(64.0, 3.0)},
        "repeats": _repeats(4.0, 256, None),
        "flops": FlopsResult(
            method="palm",
            confidence="high",
            non_embedding_parameters=10**6,
            tokens_processed=512,
            flops=1.0e9,
            flops_per_output_token=4.0e6,
        ),
    }
    values.update(fields)
    return ExperimentResult(**values)


def _timeseries(path: Path, gpus: int = 2) -> None:
    """Two GPUs, 12 seconds, three repeats with explicit window boundaries."""
    extra = [("repeat_index", pa.int32()), ("window_start_s", pa.float64()), ("window_end_s", pa.float64())]
    known = dict(TIMESERIES_COLUMNS)  # the writer's schema carries the window columns itself
    schema = pa.schema(
        [(name, getattr(pa, kind)()) for name, kind in TIMESERIES_COLUMNS]
        + [f for f in extra if f[0] not in known]
    )
    rows = []
    for second in range(12):
        repeat = second // 4
        for gpu in range(gpus):
            rows.append(
                {
                    "timestamp_s": float(second),
                    "gpu_index": gpu,
                    "power_w": 100.0 + 50 * gpu + 10 * (second % 4),
                    "temperature_c": 40.0 + second,
                    "memory_used_mb": 1000.0,
                    "memory_total_mb": 80000.0,
                    "sm_utilisation_pct": None if gpu == 1 and second == 5 else 90.0,
                    "throttle_reasons": 0,
                    "repeat_index": repeat,
                    "window_start_s": repeat * 4 + 0.5,
                    "window_end_s": repeat * 4 + 3.5,
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _report(
    run_dir: Path, created_at: str = "2026-11-22T10:00:00+00:00", commit: str = "a" * 40
) -> SessionReport:
    _timeseries(run_dir / "timeseries" / "001-gpu.parquet")
    measured = EnergyInfo(source="nvml", measured=True, method="counter delta")
    estimated = EnergyInfo(
        source="estimate", measured=False, method="cpu-time model", assumptions={"watts_per_core": 10.0}
    )
    experiments = [
        _result(
            "benchmarks/test_gpu.py::test_gpu[bs4]",
            batch_size=4,
            device="cuda:0",
            energy=measured,
            energy_j=120.0,
            energy_per_output_token_j=0.47,
            stats={"tokens_per_second": _stats(64.0, 3.0), "energy_per_output_token_j": _stats(0.47, 0.02)},
            repeats=_repeats(4.0, 256, 120.0),
            timeseries_path="timeseries/001-gpu.parquet",
        ),
        _result(
            f"tests/test_cpu.py::{HOSTILE}",
            energy=estimated,
            energy_j=3.2,
            energy_per_output_token_j=0.0125,
            stats={
                "tokens_per_second": _stats(30.0, 1.5),
                "energy_per_output_token_j": _stats(0.0125, 0.001),
            },
            tokens_per_second=30.0,
            repeats=_repeats(8.5, 256, 3.2),
            warnings=[
                MeasurementWarning(
                    flag="energy_estimated",
                    message="energy is estimated <b>not measured</b>",
                    value="estimate",
                    remedy="use a GPU meter",
                )
            ],
        ),
        _result("tests/test_cpu.py::test_broken", status="error", error="model <missing> & gone", repeats=[]),
    ]
    environment = EnvironmentSnapshot(
        python="3.11.2",
        platform="Linux",
        tool_version="0.1.0",
        cpu_model="Test CPU <8 cores>",
        cpu_count=8,
        git_commit=commit,
        git_dirty=False,
        gpus=[GpuInfo(index=0, name="Simulated H100", memory_total_mb=81559.0, power_limit_w=700.0)],
        packages={"torch": "2.13.0"},
    )
    return SessionReport(
        tool_version="0.1.0",
        created_at=created_at,
        run_id=run_dir.name,
        fingerprint="f" * 12,
        environment=environment,
        experiments=experiments,
    )


def test_page_escapes_user_strings_and_marks_estimates(tmp_path: Path) -> None:
    html = render_page(_report(tmp_path), tmp_path)
    assert "<script>" not in html and "<b>not measured" not in html and "<missing>" not in html
    assert "alert(&#x27;x&#x27;)" in html
    assert 'class="badge est">estimated' in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_charts_have_data_marks_and_windows(tmp_path: Path) -> None:
    charts = {c.chart_id: c.data_elements for c in count_charts(render_page(_report(tmp_path), tmp_path))}
    # one line per GPU; utilisation has a gap on GPU 1, so that line has two segments
    assert charts["exp-0-power_w"] >= 2
    assert charts["exp-0-sm_utilisation_pct"] >= 3
    # two passed experiments: a bar and a whisker each
    assert charts["energy-per-token"] == 4 and charts["tokens-per-second"] == 4
    assert {"prefill", "tpot", "flops"} <= set(charts)
    assert not any(key.startswith("exp-1-") for key in charts)  # the CPU run has no timeseries
    assert all(count > 0 for count in charts.values())
    html = render_page(_report(tmp_path), tmp_path)
    assert html.count('class="window"') == 3 * 3  # three windows on each of three charts


def test_windows_fall_back_to_repeat_extent_then_to_a_note() -> None:
    rows = [{"timestamp_s": float(t), "gpu_index": 0, "repeat_index": t // 3} for t in range(6)]
    spans, note = windows_from_rows(rows)
    assert [(s.start, s.end, s.label) for s in spans] == [(0.0, 3.0, "r0"), (3.0, 6.0, "r1")]
    assert note is not None and "repeat" in note
    spans, note = windows_from_rows([{"timestamp_s": 0.0, "gpu_index": 0}])
    assert spans == [] and note is not None


def test_series_are_per_gpu_with_gaps_for_unknowns_and_a_break_between_windows() -> None:
    rows: list[dict[str, float | None]] = [
        {"timestamp_s": 0.0, "gpu_index": 1, "repeat_index": 0, "power_w": 10.0},
        {"timestamp_s": 1.0, "gpu_index": 1, "repeat_index": 0, "power_w": float("nan")},
        {"timestamp_s": 1.0, "gpu_index": 1, "repeat_index": 1, "power_w": 30.0},
        {"timestamp_s": 0.0, "gpu_index": 0, "repeat_index": 0, "power_w": None},
    ]
    series = Timeseries(rows, [], None).series("power_w")
    assert [s.label for s in series] == ["GPU 1"]  # GPU 0 recorded no power at all
    assert list(series[0].points) == [(0.0, 10.0), (1.0, None), (1.0, None), (1.0, 30.0)]


def test_missing_timeseries_is_a_note_not_a_crash(tmp_path: Path) -> None:
    report = _report(tmp_path)
    (tmp_path / "timeseries" / "001-gpu.parquet").unlink()
    html = render_page(report, tmp_path)
    assert "cannot be read" in html


@pytest.mark.parametrize(
    ("low", "high"), [(0.0, 1.0), (0.0, 0.00047), (97.5, 412.0), (5.0, 5.0), (-3.0, 7.0)]
)
def test_nice_ticks_cover_the_range(low: float, high: float) -> None:
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 2 <= len(ticks) <= 12


def test_long_lines_drop_dots_but_keep_isolated_points() -> None:
    points: list[tuple[float, float | None]] = [(float(t), 1.0) for t in range(50)]
    points[20], points[22] = (20.0, None), (22.0, None)  # second 21 stands alone
    svg = line_chart("c", "title", "x", "y", [Series("GPU 0", points)])
    assert svg.count("<circle") == 1 and svg.count("<path") == 2


def test_trend_chart_appears_with_two_runs(tmp_path: Path) -> None:
    older = _report(tmp_path / "old", created_at="2026-11-20T10:00:00+00:00", commit="b" * 40)
    newer = _report(tmp_path / "new")
    charts = {c.chart_id for c in count_charts(render_page(newer, tmp_path / "new", [("old", older)]))}
    assert {"trend-energy", "trend-speed"} <= charts
    alone = {c.chart_id for c in count_charts(render_page(newer, tmp_path / "new", [("new", newer)]))}
    assert "trend-speed" not in alone  # the same run twice is one run


def test_written_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    write_html_report(_report(tmp_path), tmp_path, out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


def _simulated_report(run_dir: Path) -> SessionReport:
    """A real session on a simulated GPU (simulated clock, so exact): two batch sizes, three
    windows each, the sampler's own Parquet timeseries."""
    from pytest_llem import ExperimentSession
    from pytest_llem.testing import Function, SimulatedGpu, SimulatedWorkload, simulated_gpus

    gpu = SimulatedGpu(
        name="Simulated A100 (pytest_llem.testing)",
        power_w=Function(lambda t: 180.0 + 120.0 * math.sin(t / 2.0) ** 2),
        temperature_c=Function(lambda t: 45.0 + t / 4.0),
        utilisation_pct=Function(lambda t: 80.0 + 15.0 * math.cos(t / 3.0)),
    )
    settings = simulated_settings(
        n_prompts=4, max_new_tokens=100, repeats=3, energy={"meter": "nvml", "baseline_s": 1.0}
    )
    with simulated_gpus([gpu], SimulatedWorkload(seconds_per_token=0.01)):
        session = ExperimentSession(output_dir=run_dir)
        try:
            results = [
                session.run(
                    build_config(("test", {**settings, "batch_size": bs})), f"bench.py::test_sim[bs{bs}]"
                )
                for bs in (1, 2)
            ]
            environment = session.environment()
        finally:
            session.close()
    assert all(result.status == "passed" for result in results), [r.error for r in results]
    return SessionReport(
        tool_version="0",
        created_at="2026-11-22T10:00:00+00:00",
        run_id="simulated-gpu-example",
        environment=environment,
        experiments=results,
    )


def test_a_simulated_gpu_session_charts_its_own_timeseries(tmp_path: Path) -> None:
    """End to end: the sampler's own Parquet becomes the charts, windows marked."""
    html = render_page(_simulated_report(tmp_path), tmp_path)
    charts = {c.chart_id: c.data_elements for c in count_charts(html)}
    for experiment in (0, 1):
        for column in ("power_w", "temperature_c", "sm_utilisation_pct"):
            assert charts[f"exp-{experiment}-{column}"] >= 3, charts  # a line per window, and dots
    assert html.count('class="window"') == 2 * 3 * 3  # 2 experiments x 3 charts x 3 windows
    assert 'class="badge meas">measured' in html
    assert html.count("per token and request") == 2 and html.count("prefill / decode") == 2


def test_the_steady_state_and_a_part_without_energy_say_what_they_are(tmp_path: Path) -> None:
    report = _simulated_report(tmp_path)
    first = report.experiments[0]
    steady = SteadyState(
        max_num_seqs=2,
        requests=8,
        seconds=9.5,
        output_tokens=376,
        energy_j=122.3,
        energy_per_output_token_j=0.3253,
        tokens_per_second=39.6,
        average_power_w=12.87,
    )
    none = SteadyState(
        max_num_seqs=4, requests=4, null_reason="no steady state: 4 requests for max_num_seqs=4"
    )
    report = report.model_copy(
        update={
            "experiments": [
                first.model_copy(update={"steady_state": steady}),
                report.experiments[1].model_copy(update={"steady_state": none}),
            ]
        }
    )
    html = render_page(report, tmp_path)
    assert (
        "steady state (max_num_seqs 2)" in html and "376 tokens, 39.6 tokens/s, 0.3253 J/output token" in html
    )
    assert "no steady state: 4 requests for max_num_seqs=4" in html


chromium = pytest.mark.skipif(
    find_chromium() is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)"
)


@chromium
def test_report_renders_in_chromium_without_console_errors(tmp_path: Path) -> None:
    older = _report(tmp_path / "old", created_at="2026-11-20T10:00:00+00:00", commit="b" * 40)
    page = write_html_report(_report(tmp_path), tmp_path, tmp_path / "report.html", [("old", older)])
    expected = {c.chart_id for c in count_charts(page.read_text(encoding="utf-8"))}
    shot = tmp_path / "report.png"
    check = check_page(page, shot, (1400, 2400))
    assert check.console == []
    rendered = {c.chart_id: c.data_elements for c in check.charts}
    assert set(rendered) == expected and len(expected) >= 10
    assert all(count > 0 for count in rendered.values()), rendered
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@chromium
def test_console_errors_are_caught(tmp_path: Path) -> None:
    """The check itself: a page that logs and throws is seen to do so."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); undefinedFn();</script></body></html>")
    check = check_page(page)
    assert any("boom" in line for line in check.console)
    assert any("undefinedFn" in line for line in check.console)


EXAMPLE = REPO / "docs" / "report-example.html"


@chromium
@pytest.mark.skipif(not EXAMPLE.is_file(), reason="docs/report-example.html not generated")
def test_docs_example_renders(tmp_path: Path) -> None:
    """The example in docs/ renders cleanly; LLEM_DOCS_SCREENSHOT=1 refreshes docs/report-example.png."""
    shot = tmp_path / "report-example.png"
    check = check_page(EXAMPLE, shot, (1400, 2000))
    assert check.console == [] and check.charts
    assert all(chart.data_elements > 0 for chart in check.charts)
    if os.environ.get("LLEM_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, EXAMPLE.with_suffix(".png"))


SIMULATED_CONFTEST = """
from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, simulated_gpus

def pytest_configure(config):
    simulation = simulated_gpus([SimulatedGpu(power_w=250.0)], SimulatedWorkload(seconds_per_token=0.01))
    simulation.__enter__()
    config.add_cleanup(lambda: simulation.__exit__(None, None, None))
"""


def test_llem_html_option_writes_the_report_at_session_end(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SIMULATED_CONFTEST)
    pytester.makepyfile(
        """
        def test_simulated(llem):
            llem.run(
                engine="simulated", model="sim", device="cuda:0", energy="nvml", n_prompts=2,
                max_new_tokens=100, warmup={"n_warmup": 1, "thermal_floor_s": 0},
            )
        """
    )
    result = pytester.runpytest(
        "--llem-html=out/report.html", "--llem-baseline-s=0", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llem HTML report: *out*report.html"])
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    charts = {chart.chart_id for chart in count_charts(html)}
    assert {"energy-per-token", "tokens-per-second", "exp-0-power_w"} <= charts
    assert 'class="badge meas">measured' in html
    assert "Trend across" not in html  # one run: nothing to trend yet
    pytester.runpytest("--llem-html=out/report.html", "--llem-baseline-s=0", "-p", "no:cacheprovider")
    assert "Trend across 2 stored runs" in (pytester.path / "out" / "report.html").read_text(encoding="utf-8")


@chromium
def test_simulated_gpu_report_renders_in_chromium(tmp_path: Path) -> None:
    """The timeseries charts in a browser; LLEM_DOCS_SCREENSHOT=1 refreshes docs/report-simulated-gpu.png."""
    page = write_html_report(_simulated_report(tmp_path), tmp_path, tmp_path / "report.html")
    shot = tmp_path / "report-simulated-gpu.png"
    check = check_page(page, shot, (1400, 1700))
    assert check.console == []
    assert sum(chart.chart_id.startswith("exp-") for chart in check.charts) == 6
    assert all(chart.data_elements > 0 for chart in check.charts)
    if os.environ.get("LLEM_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "report-simulated-gpu.png")


def test_the_page_fits_a_common_width_and_long_names_are_shortened_with_the_whole_name_on_hover(
    tmp_path: Path,
) -> None:
    long_name = (
        "tests/test_engines.py::test_llem_run_matches_bare_generate_within_the_harness_overhead_budget"
    )
    report = _report(tmp_path)
    report.experiments.append(_result(long_name))
    html = render_page(report, tmp_path)
    # every table scrolls inside its own box, so the page never grows wider than the viewport
    assert html.count("<table>") == html.count('<div class="scroll"><table>') > 0
    label = long_name.split("::", 1)[1]
    assert f"<title>{label}</title>" in html  # the whole name on hover
    shortened = re.findall(r"<title>" + re.escape(label) + r"</title>([^<]*)</text>", html)
    assert shortened and all("…" in text and len(text) <= 30 for text in shortened)


def test_a_gguf_experiment_shows_its_weight_format_not_the_ignored_dtype(tmp_path: Path) -> None:
    gguf = _result("t.py::test_llama", engine_settings={"weight_format": "Q4_1"})
    assert gguf.weights == "Q4_1" and _result("t.py::test_torch").weights == "float32"
    report = _report(tmp_path)
    report.experiments = [gguf]
    html = render_page(report, tmp_path)
    assert "<td>Q4_1</td>" in html and "weights Q4_1" in html
