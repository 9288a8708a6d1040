"""Writing and reading session reports: JSON (the record) plus Parquet (for analysis).

Every write goes to a temporary file in the target directory and is renamed into place, so a
reader (or a crash) never sees half a report. The plugin rewrites the report after each
experiment, so an interrupted session keeps everything it measured.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_llem.environment import EnvironmentSnapshot
from pytest_llem.results import SCHEMA_VERSION, ExperimentResult, SessionReport

REPORT_NAME = "report.json"
PARQUET_NAME = "experiments.parquet"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(temp_path)` then rename the temporary file over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def experiment_row(result: ExperimentResult) -> dict[str, Any]:
    """One flat row per experiment for the Parquet table."""
    config = result.config
    stats = result.stats.get("energy_per_output_token_j")
    return {
        "nodeid": result.nodeid,
        "status": result.status,
        "error": result.error,
        "test_outcome": result.test_outcome,
        "config_hash": result.config_hash,
        "model": config.model,
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "n_prompts": config.n_prompts,
        "max_new_tokens": config.max_new_tokens,
        "num_threads": config.num_threads,
        "repeats": config.repeats,
        "device": result.device,
        "output_tokens": result.output_tokens,
        "input_tokens": result.input_tokens,
        "window_s": result.window_s,
        "tokens_per_second": result.tokens_per_second,
        "prefill_s": result.prefill_s,
        "time_per_output_token_s": result.time_per_output_token_s,
        "energy_j": result.energy_j,
        "energy_per_output_token_j": result.energy_per_output_token_j,
        "energy_per_output_token_j_ci95_low": stats.ci95_low if stats else None,
        "energy_per_output_token_j_ci95_high": stats.ci95_high if stats else None,
        "baseline_power_w": result.baseline_power_w,
        "energy_adjusted_j": result.energy_adjusted_j,
        "energy_adjusted_per_output_token_j": result.energy_adjusted_per_output_token_j,
        "energy_source": result.energy.source if result.energy else None,
        "energy_measured": result.energy.measured if result.energy else None,
        "flops": result.flops.flops if result.flops else None,
        "warnings": ",".join(result.warning_flags),
        "timeseries_path": result.timeseries_path,
        "config_json": config.model_dump_json(),
    }


def write_report(report: SessionReport, path: Path) -> None:
    """Write report.json and, beside it, experiments.parquet; both atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = report.model_dump_json(indent=2)

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write_json)
    rows = [experiment_row(result) for result in report.experiments]
    if rows:
        table = pa.Table.from_pylist(rows)
        atomic_write(path.parent / PARQUET_NAME, lambda tmp: pq.write_table(table, tmp))


class ReportError(ValueError):
    """A report file that cannot be read, with the path and the reason."""


def read_report(path: Path) -> SessionReport:
    """Read a report; a directory means its report.json. Refuses unknown schema versions."""
    file = path / REPORT_NAME if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read report {file}: {exc}") from None
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"report {file} has schema_version={version!r}; this pytest-llem reads {SCHEMA_VERSION}"
        )
    return SessionReport.model_validate(data)


def new_report(
    environment: EnvironmentSnapshot, when: datetime, fingerprint: str | None, run_id: str
) -> SessionReport:
    return SessionReport(
        tool_version=environment.tool_version,
        created_at=when.isoformat(),
        run_id=run_id,
        fingerprint=fingerprint,
        environment=environment,
    )
