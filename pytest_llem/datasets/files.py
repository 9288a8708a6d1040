"""Reading prompts from a user's JSONL, CSV or Parquet file.

Every problem is a one-line `ConfigError` that names the file, the line (JSONL, CSV) or row
(Parquet) and the fix, so a user can go straight to the bad record. Pre-flight reads the file
through here before any model loads.
"""

from __future__ import annotations

import csv
import io
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llem.schema.dataset_names import FILE_SUFFIXES
from pytest_llem.schema.errors import ConfigError

PROMPT_COLUMN_CANDIDATES = ("prompt", "text", "question", "instruction", "input", "content")
_BOM = b"\xef\xbb\xbf"
_SHOWN = 120  # characters of a bad value shown in a message
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


@dataclass(frozen=True)
class _Record:
    """One row of a file and where it sits ("line 3", "row 2"), for error messages."""

    where: str
    values: dict[Any, Any]


def _fail(path: Path, detail: str) -> ConfigError:
    return ConfigError(f"dataset {str(path)!r}: {detail}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _read_text(path: Path) -> str:
    """The file as text; non-UTF-8 bytes are an error naming the byte offset and line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    start = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data[:offset].count(b"\n") + 1
        raise _fail(
            path,
            f"line {line} is not valid UTF-8 (byte offset {offset}: {data[offset : offset + 1]!r}); "
            "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`",
        ) from None


def _unreadable(path: Path, exc: OSError) -> ConfigError:
    return _fail(path, f"cannot be read ({exc.strerror or exc}); check that it is a readable file")


def _jsonl_records(path: Path) -> Iterator[_Record]:
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(
                path,
                f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line",
            ) from None
        except RecursionError:
            raise _fail(
                path, f"line {number} is nested too deeply to read; fix or remove that line"
            ) from None
        if not isinstance(value, dict):
            raise _fail(
                path,
                f"line {number} is {_JSON_KINDS.get(type(value), 'null')}, not a JSON object; "
                'write one object per line, e.g. {"prompt": "..."}',
            )
        yield _Record(f"line {number}", value)


def _csv_records(path: Path) -> tuple[list[_Record], list[str]]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records = []
    # the csv module refuses fields over 128 KiB by default; a long-context prompt may be longer
    default_limit = csv.field_size_limit(max(len(text), csv.field_size_limit()))
    try:
        for row in reader:
            if None in row:
                raise _fail(
                    path,
                    f"line {reader.line_num} has more fields than the header {reader.fieldnames}; "
                    "quote fields that contain commas",
                )
            records.append(_Record(f"line {reader.line_num}", row))
    except csv.Error as exc:
        raise _fail(path, f"line {reader.line_num} is not valid CSV ({exc}); fix that line") from None
    finally:
        csv.field_size_limit(default_limit)
    return records, list(reader.fieldnames or [])


def _columns(records: list[_Record], header: list[str] | None = None) -> list[str]:
    """Every column seen, in order of first appearance."""
    seen: dict[str, None] = dict.fromkeys(header or [])
    for record in records:
        seen.update(dict.fromkeys(str(key) for key in record.values))
    return list(seen)


def _choose_column(path: Path, columns: list[str], named: str | None) -> str:
    if named is not None:
        if named not in columns:
            raise _fail(
                path, f"prompt_column={named!r} is not a column; columns found: {columns}; name one of those"
            )
        return named
    for candidate in PROMPT_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    raise _fail(
        path,
        f"no prompt column found; columns found: {columns} (looked for "
        f"{', '.join(PROMPT_COLUMN_CANDIDATES)}); name one with prompt_column=...",
    )


def _prompt(path: Path, record: _Record, column: str) -> str:
    if column not in record.values:
        keys = [str(key) for key in record.values]
        raise _fail(
            path, f"{record.where} has no {column!r} (its columns: {keys}); add it or remove the line"
        )
    value = record.values[column]
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    problem = "is empty" if value is None or isinstance(value, str) else f"is {_short(value)}, not text"
    raise _fail(
        path, f"{record.where}: {column!r} {problem}; every row needs a prompt (fill it in or remove it)"
    )


def _text_file_prompts(path: Path, named: str | None) -> list[str]:
    if path.suffix.lower() == ".jsonl":
        records, header = list(_jsonl_records(path)), None
    else:
        records, header = _csv_records(path)
    if not records:
        return []
    column = _choose_column(path, _columns(records, header), named)
    return [_prompt(path, record, column) for record in records]


def _parquet_prompts(path: Path, named: str | None) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        columns = list(pq.read_schema(path).names)
        column = _choose_column(path, columns, named)
        values = pq.read_table(path, columns=[column]).column(0).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(
            path,
            f"is not a readable Parquet file ({reason[:_SHOWN]}); rewrite it, e.g. with pandas .to_parquet()",
        ) from None
    return [_prompt(path, _Record(f"row {i}", {column: v}), column) for i, v in enumerate(values, start=1)]


def read_prompts(path: Path, prompt_column: str | None) -> list[str]:
    """Every prompt of the file, in file order; a file without any is an error."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise _fail(path, f"unsupported file type '{suffix}'; use a {', '.join(FILE_SUFFIXES)} file")
    try:
        is_dir = stat.S_ISDIR(path.stat().st_mode)
    except FileNotFoundError:
        raise _fail(
            path,
            "file not found; a relative path resolves against the test file's directory "
            "(or the current directory outside pytest)",
        ) from None
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if is_dir:
        raise _fail(path, "is a directory; name a file inside it")
    if suffix == ".parquet":
        prompts = _parquet_prompts(path, prompt_column)
    else:
        prompts = _text_file_prompts(path, prompt_column)
    if not prompts:
        raise _fail(path, "holds no prompts; add at least one row")
    return prompts
