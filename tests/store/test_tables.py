"""Tables that tools read: ten stored runs, read with one glob by duckdb, polars and pandas,
no options. Columns that are all null in one run (`error`, `timeseries_path`, a GPU's
temperature) are still typed, so runs with and without values concatenate."""

from __future__ import annotations

import glob
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from factories import make_repeat, make_result

from pytest_llem.hardware.sampler import TIMESERIES_COLUMNS, Sample, bucket_windows
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.results import (
    EnergyInfo,
    ExperimentResult,
    FlopsResult,
    MeasurementWarning,
)
from pytest_llem.store.report import PARQUET_NAME, REPORT_NAME, experiments_schema, new_report, write_report
from pytest_llem.store.runs import RunStore
from pytest_llem.store.timeseries import write_timeseries

duckdb = pytest.importorskip("duckdb")
pl = pytest.importorskip("polars")
pd = pytest.importorskip("pandas")


def _warning(flag: str, message: str) -> MeasurementWarning:
    return MeasurementWarning(flag=flag, message=message, remedy="r")


def _experiment(run: int, k: int, with_timeseries: bool) -> ExperimentResult:
    config = ExperimentConfig(model="tiny", num_threads=1, batch_size=k + 1)
    failed = run == 5 and k == 1
    return make_result(
        f"bench.py::test_{k}",
        config=config,
        status="error" if failed else "passed",
        error="pre-flight failed: no GPU" if failed else None,
        output_tokens=0 if failed else 64,
        window_s=0.0 if failed else 2.0,
        tokens_per_second=0.0 if failed else 32.0,
        energy_j=None if failed else 20.0 + run,
        energy_per_output_token_j=None if failed else (20.0 + run) / 64,
        energy=None
        if failed
        else EnergyInfo(source="estimate", measured=False, method="cpu-time model", assumptions={"w": 10}),
        flops=None
        if failed
        else FlopsResult(
            method="palm",
            confidence="high",
            non_embedding_parameters=1000,
            tokens_processed=64,
            flops=128000.0,
            flops_per_output_token=2000.0,
        ),
        repeats=[]
        if failed
        else [
            make_repeat(
                0,
                window_s=2.0,
                output_tokens=64,
                input_tokens=8,
                energy_j=20.0,
                tokens_per_second=32.0,
                energy_per_output_token_j=0.3,
                prefill_s=0.1,
                time_per_output_token_s=0.03,
            )
        ],
        timeseries_path=f"timeseries/{k:03d}.parquet" if with_timeseries else None,
        warnings=[_warning("short_window", "repeat 1"), _warning("short_window", "repeat 2")],
    )


def _samples(start: float, known_temperature: bool) -> list[Sample]:
    return [
        Sample(start + i / 10, 0, 100.0 + i, 50.0 if known_temperature else None, 1.0, 2.0, None, None)
        for i in range(15)
    ]


def _ten_runs(root: Path) -> Path:
    store = RunStore(root)
    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    for run in range(10):
        environment = EnvironmentSnapshot(
            python="3", platform="linux", tool_version="0", git_commit=f"{run:040d}"
        )
        run_dir = store.create_run_dir(environment.git_commit, False, when)
        report = new_report(environment, when.replace(hour=run), "fp", run_dir.name, "main" if run else None)
        report.completed = run != 9
        with_timeseries = run % 2 == 0  # odd runs have no timeseries at all: the column is all null
        report.experiments = [_experiment(run, k, with_timeseries) for k in range(2)]
        write_report(report, run_dir / REPORT_NAME)
        if with_timeseries:
            for k in range(2):
                windows = [(0.0, 1.5, _samples(0.0, run != 0)), (2.0, 3.5, _samples(2.0, run != 0))]
                write_timeseries(bucket_windows(windows, 0.0), run_dir / f"timeseries/{k:03d}.parquet")
    return store.runs_dir


def test_ten_stored_runs_read_with_one_glob_in_duckdb_polars_and_pandas(tmp_path: Path) -> None:
    runs = _ten_runs(tmp_path / ".llem")
    experiments = str(runs / "*" / PARQUET_NAME)
    timeseries = str(runs / "*" / "timeseries" / "*.parquet")

    table = duckdb.sql(f"SELECT * FROM '{experiments}'").pl()
    frames = {"duckdb": table, "polars": pl.read_parquet(experiments)}
    for name, frame in frames.items():
        assert frame.height == 20, name
        assert frame.schema["error"] == pl.String and frame.schema["timeseries_path"] == pl.String
        assert frame["run_id"].n_unique() == 10 and frame["commit"].n_unique() == 10
    pandas = pd.read_parquet(sorted(glob.glob(experiments)))
    assert len(pandas) == 20 and pandas["run_id"].nunique() == 10
    assert pandas["error"].notna().sum() == 1

    row = frames["polars"].filter(pl.col("status") == "passed").row(0, named=True)
    assert row["engine"] == "transformers" and row["meter"] == "auto" and row["energy_source"] == "estimate"
    assert row["energy_method"] == "cpu-time model" and json.loads(row["energy_assumptions_json"]) == {
        "w": 10
    }
    assert (row["flops_method"], row["flops_confidence"]) == ("palm", "high")
    assert row["created_at"].tzinfo is not None and row["warnings"] == "short_window"  # flag once

    for frame in (duckdb.sql(f"SELECT * FROM '{timeseries}'").pl(), pl.read_parquet(timeseries)):
        assert frame.height == 5 * 2 * 2 * 2  # runs with timeseries x experiments x windows x seconds
        assert frame.schema["temperature_c"] == pl.Float32  # all null in run 0, still typed
        assert set(frame["repeat_index"]) == {0, 1}
        first = frame.filter(pl.col("repeat_index") == 1).sort("timestamp_s").row(0, named=True)
        assert (first["window_start_s"], first["window_end_s"], first["timestamp_s"]) == (2.0, 3.5, 2.0)
    assert len(pd.read_parquet(sorted(glob.glob(timeseries)))) == 40


def test_every_column_is_typed_and_none_is_null_typed() -> None:
    import pyarrow as pa

    assert all(field.type != pa.null() for field in experiments_schema())
    names = [name for name, _ in TIMESERIES_COLUMNS]
    assert {"repeat_index", "window_start_s", "window_end_s"} <= set(names) and len(names) == len(set(names))


def test_every_scalar_field_of_an_experiment_is_a_column_and_every_row_key_is_in_the_schema() -> None:
    """One column list makes both the schema and the rows (`store.columns`); a scalar field added
    to `ExperimentResult` becomes a column of the same name, or is named here with why not."""
    import typing

    from pytest_llem.schema.results import ExperimentResult
    from pytest_llem.store.columns import columns
    from pytest_llem.store.report import experiment_row

    not_columns: set[str] = set()  # a scalar field kept out of the table would be named here, with why
    scalar = {
        name
        for name, field in ExperimentResult.model_fields.items()
        if set(typing.get_args(field.annotation) or (field.annotation,)) - {type(None)}
        <= {int, float, str, bool}
        or typing.get_origin(field.annotation) is typing.Literal
    }
    names = [column.name for column in columns()]
    assert len(names) == len(set(names))
    assert scalar - not_columns - set(names) == set()
    result = make_result("t::x", config=ExperimentConfig(), config_hash="h")
    assert list(experiment_row(result)) == names == [field.name for field in experiments_schema()]
