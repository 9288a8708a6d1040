"""The timeseries file: one Parquet per experiment, 1 Hz rows per device (schema in
`pytest_llem.hardware.sampler.TIMESERIES_COLUMNS`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_llem.hardware.sampler import TIMESERIES_COLUMNS
from pytest_llem.store.files import atomic_write


def write_timeseries(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the Parquet with its explicit schema (every column typed, even when all null),
    atomically and with the user's umask."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in TIMESERIES_COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
