"""Writing and reading session reports: JSON (the record) plus Parquet (for analysis).

Every write goes through `store.files.atomic_write`, so a reader (or a crash) never sees half a
report. While a session runs, its experiments are appended to `report.jsonl` beside the report
(`store.writer.ReportWriter`); `read_report` joins those lines to the header, so an interrupted
session keeps everything it measured.

The Parquet tables have explicit schemas: a column is typed even when every value in it is
null, so many runs read with one glob (duckdb, polars, pandas) without "String != Null".
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llem.store.files import atomic_write, write_text

if TYPE_CHECKING:  # the records load with the first report read or written, not at start-up
    import pyarrow as pa

    from pytest_llem.schema.environment import EnvironmentSnapshot
    from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult, SessionReport

REPORT_NAME = "report.json"
PARQUET_NAME = "experiments.parquet"


def experiments_schema() -> pa.Schema:
    """One row per experiment. Every column is typed, whatever the values."""
    import pyarrow as pa

    string, f64, i64 = pa.string(), pa.float64(), pa.int64()
    return pa.schema(
        [
            ("run_id", string),
            ("run_name", string),
            ("created_at", pa.timestamp("us", tz="UTC")),
            ("completed", pa.bool_()),
            ("fingerprint", string),
            ("commit", string),
            ("dirty", pa.bool_()),
            ("nodeid", string),
            ("status", string),
            ("error", string),
            ("test_outcome", string),
            ("config_hash", string),
            ("engine", string),
            ("engine_version", string),
            ("model", string),
            ("dtype", string),
            ("batch_size", i64),
            ("n_prompts", i64),
            ("max_new_tokens", i64),
            ("num_threads", i64),
            ("repeats", i64),
            ("min_window_s", f64),
            ("power_limit_w", f64),
            ("gpu_clocks_mhz", i64),
            ("window_passes", i64),
            ("device", string),
            ("output_tokens", i64),
            ("window_output_tokens", i64),
            ("input_tokens", i64),
            ("window_s", f64),
            ("tokens_per_second", f64),
            ("prefill_s", f64),
            ("time_per_output_token_s", f64),
            ("latency_scope", string),
            *[(f"{m}_{p}_s", f64) for m in LATENCY_METRICS for p in LATENCY_PERCENTILES],
            ("energy_j", f64),
            ("energy_per_output_token_j", f64),
            ("energy_per_output_token_j_ci95_low", f64),
            ("energy_per_output_token_j_ci95_high", f64),
            ("baseline_power_w", f64),
            ("baseline_skipped_reason", string),
            ("energy_adjusted_j", f64),
            ("energy_adjusted_per_output_token_j", f64),
            ("energy_per_input_token_j", f64),
            ("energy_per_total_token_j", f64),
            ("energy_per_request_j", f64),
            ("average_power_w", f64),
            ("output_tokens_per_joule", f64),
            ("meter", string),
            ("energy_source", string),
            ("energy_measured", pa.bool_()),
            ("energy_method", string),
            ("energy_assumptions_json", string),
            ("g_co2e_per_output_token", f64),
            ("carbon_intensity_g_per_kwh", f64),
            ("carbon_intensity_source", string),
            ("flops", f64),
            ("flops_method", string),
            ("flops_confidence", string),
            ("warnings", string),
            ("validity", string),
            ("validity_failed", string),
            *[(column, _arrow_type(kind)) for column, _, _, kind in _nested_columns()],
            ("worker", string),  # the xdist worker (slot), null without xdist
            ("slot_gpus", string),  # the slot's NVML indexes, e.g. "2,3"
            ("slot_cores", string),
            ("concurrent_experiments", i64),
            ("timeseries_path", string),
            ("config_json", string),
        ]
    )


@functools.cache
def _nested_columns() -> tuple[tuple[str, str, str, Any], ...]:
    """The prefill/decode split and the steady state as flat columns, one per field of their
    records (`phase_decode_energy_j`, `steady_state_energy_per_output_token_j`, ...): (column,
    result attribute, field, annotation). Null where the record or the figure is."""
    from pytest_llem.schema.results import PhaseEnergy, SteadyState

    return tuple(
        (f"{prefix}{name}", attribute, name, field.annotation)
        for attribute, prefix, record in (
            ("phases", "phase_", PhaseEnergy),
            ("steady_state", "steady_state_", SteadyState),
        )
        for name, field in record.model_fields.items()
    )


def _arrow_type(annotation: Any) -> pa.DataType:
    import pyarrow as pa

    kinds = set(getattr(annotation, "__args__", (annotation,))) - {type(None)}
    if kinds == {int}:
        return pa.int64()
    if kinds == {float}:
        return pa.float64()
    return pa.string()


def _timestamp(text: str) -> datetime | None:
    """The report's ISO creation time (UTC when it names no zone); None if it is not one."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


LATENCY_METRICS = ("ttft", "tpot", "itl")
LATENCY_PERCENTILES = ("p50", "p90", "p99")


def _latency_columns(result: ExperimentResult) -> dict[str, Any]:
    """Per-request latency percentiles as flat columns (`ttft_p50_s`, ...), nulls when unknown."""
    latency = result.latency
    columns: dict[str, Any] = {"latency_scope": latency.scope if latency else None}
    for metric in LATENCY_METRICS:
        values = getattr(latency, f"{metric}_s") if latency else None
        for percentile in LATENCY_PERCENTILES:
            columns[f"{metric}_{percentile}_s"] = getattr(values, percentile) if values else None
    return columns


def experiment_row(result: ExperimentResult, report: SessionReport | None = None) -> dict[str, Any]:
    """One flat row per experiment for the Parquet table; run columns come from `report`."""
    config = result.config
    stats = result.stats.get("energy_per_output_token_j")
    energy = result.energy
    emissions = result.emissions
    created = _timestamp(report.created_at) if report else None
    return {
        "run_id": report.run_id if report else None,
        "run_name": report.name if report else None,
        "created_at": created,
        "completed": report.completed if report else None,
        "fingerprint": result.fingerprint or (report.fingerprint if report else None),
        "commit": report.environment.git_commit if report else None,
        "dirty": report.environment.git_dirty if report else None,
        "nodeid": result.nodeid,
        "status": result.status,
        "error": result.error,
        "test_outcome": result.test_outcome,
        "config_hash": result.config_hash,
        "engine": getattr(result, "engine", None) or config.engine,
        "engine_version": result.engine_version,
        "model": config.model,
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "n_prompts": config.n_prompts,
        "max_new_tokens": config.max_new_tokens,
        "num_threads": config.num_threads,
        "repeats": config.repeats,
        "min_window_s": config.min_window_s,
        "power_limit_w": config.power_limit_w,
        "gpu_clocks_mhz": config.gpu_clocks_mhz,
        "window_passes": result.window_passes,
        "device": result.device,
        "output_tokens": result.output_tokens,
        "window_output_tokens": result.window_output_tokens,
        "input_tokens": result.input_tokens,
        "window_s": result.window_s,
        "tokens_per_second": result.tokens_per_second,
        "prefill_s": result.prefill_s,
        "time_per_output_token_s": result.time_per_output_token_s,
        **_latency_columns(result),
        "energy_j": result.energy_j,
        "energy_per_output_token_j": result.energy_per_output_token_j,
        "energy_per_output_token_j_ci95_low": stats.ci95_low if stats else None,
        "energy_per_output_token_j_ci95_high": stats.ci95_high if stats else None,
        "baseline_power_w": result.baseline_power_w,
        "baseline_skipped_reason": result.baseline_skipped_reason,
        "energy_adjusted_j": result.energy_adjusted_j,
        "energy_adjusted_per_output_token_j": result.energy_adjusted_per_output_token_j,
        "energy_per_input_token_j": result.energy_per_input_token_j,
        "energy_per_total_token_j": result.energy_per_total_token_j,
        "energy_per_request_j": result.energy_per_request_j,
        "average_power_w": result.average_power_w,
        "output_tokens_per_joule": result.output_tokens_per_joule,
        "meter": config.energy.meter,
        "energy_source": energy.source if energy else None,
        "energy_measured": energy.measured if energy else None,
        "energy_method": energy.method if energy else None,
        "energy_assumptions_json": _json(energy.assumptions) if energy else None,
        "g_co2e_per_output_token": emissions.g_co2e_per_output_token if emissions else None,
        "carbon_intensity_g_per_kwh": emissions.carbon_intensity_g_per_kwh if emissions else None,
        "carbon_intensity_source": emissions.intensity_source if emissions else None,
        "flops": result.flops.flops if result.flops else None,
        "flops_method": result.flops.method if result.flops else None,
        "flops_confidence": result.flops.confidence if result.flops else None,
        "warnings": ",".join(dict.fromkeys(result.warning_flags)),
        "validity": result.validity.status if result.validity else None,
        "validity_failed": ",".join(c.name for c in result.validity.failed) if result.validity else None,
        **{
            column: getattr(getattr(result, record), name, None)
            for column, record, name, _ in _nested_columns()
        },
        "worker": result.slot.worker if result.slot else None,
        "slot_gpus": ",".join(str(i) for i in result.slot.gpu_indexes) if result.slot else None,
        "slot_cores": ",".join(map(str, result.slot.cores)) if result.slot else None,
        "concurrent_experiments": result.slot.concurrent_experiments if result.slot else None,
        "timeseries_path": result.timeseries_path,
        "config_json": config.model_dump_json(),
    }


def experiments_table(report: SessionReport) -> pa.Table:
    import pyarrow as pa

    rows = [experiment_row(result, report) for result in report.experiments]
    return pa.Table.from_pylist(rows, schema=experiments_schema())


def write_report(report: SessionReport, path: Path) -> None:
    """Write report.json and, beside it, experiments.parquet; both atomically."""
    import pyarrow.parquet as pq

    text = report.model_dump_json(indent=2)
    table = experiments_table(report) if report.experiments else None
    write_text(path, text)
    if table is not None:
        atomic_write(path.parent / PARQUET_NAME, lambda tmp: pq.write_table(table, tmp))


def write_report_or_keep(report: SessionReport, path: Path) -> str | None:
    """Write the report; None on success, else the one-line error (see `keep_elsewhere`)."""
    try:
        write_report(report, path)
        return None
    except Exception as exc:  # any failure: disk, permissions, a value Parquet cannot hold
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return keep_elsewhere(report, f"cannot write the report {path} ({reason})")


def keep_elsewhere(report: SessionReport, problem: str) -> str:
    """Keep every result in a file in the temp directory (so a full disk, a vanished or
    read-only directory never loses a measurement); the one-line error names that file."""
    fallback = Path(tempfile.gettempdir()) / f"llem-{report.run_id or 'run'}-{os.getpid()}.json"
    try:
        write_text(fallback, report.model_dump_json(indent=2, fallback=str))
        kept = f"every measured result is kept in {fallback}"
    except Exception as exc:
        kept = f"the results could not be kept either ({fallback}: {exc})"
    return f"pytest-llem {problem}; {kept}"


class ReportError(ValueError):
    """A report file that cannot be read, with the path and the reason."""


def lines_path(report_path: Path) -> Path:
    """Where a running session appends its records: `report.jsonl` beside `report.json`."""
    return report_path.with_name(report_path.stem + ".jsonl")


def _appended(report: SessionReport, file: Path) -> SessionReport:
    """The report with the records a session appended before it was compacted (or killed).
    Only a header (no experiments yet) takes them: a compacted report already holds them. A
    last line cut short by a kill is left out."""
    from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult

    lines = lines_path(file)
    if report.experiments or not lines.is_file():
        return report
    experiments: list[ExperimentResult] = []
    figures: list[BenchmarkFigure] = []
    for text in lines.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(text)
        except ValueError:
            continue  # the line being written when the session was killed
        if isinstance(record, dict) and record.get("experiment") is not None:
            experiments.append(ExperimentResult.model_validate(record["experiment"]))
        if isinstance(record, dict) and record.get("figure") is not None:
            figures.append(BenchmarkFigure.model_validate(record["figure"]))
    return report.model_copy(update={"experiments": experiments, "figures": report.figures + figures})


def read_report(path: Path) -> SessionReport:
    """Read a report; a directory means its report.json. Refuses unknown schema versions and
    anything that is not a report, with the path and the reason in one line."""
    from pytest_llem.schema.results import SCHEMA_VERSION, SessionReport

    file = path / REPORT_NAME if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read report {file}: {exc}") from None
    if not isinstance(data, dict):
        raise ReportError(
            f"{file} is not a pytest-llem report: expected a JSON object, found {type(data).__name__}"
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"report {file} has schema_version={version!r}; this pytest-llem reads {SCHEMA_VERSION}"
        )
    try:
        return _appended(SessionReport.model_validate(data), file)
    except ValueError as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise ReportError(f"{file} is not a valid pytest-llem report: {detail}") from None


def new_report(
    environment: EnvironmentSnapshot,
    when: datetime,
    fingerprint: str | None,
    run_id: str,
    name: str | None = None,
) -> SessionReport:
    from pytest_llem.schema.results import SessionReport

    return SessionReport(
        tool_version=environment.tool_version,
        created_at=when.isoformat(),
        run_id=run_id,
        name=name,
        completed=False,
        fingerprint=fingerprint,
        environment=environment,
    )
