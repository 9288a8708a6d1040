"""Turn `dataset` + `n_prompts` into the prompts of one experiment, deterministically."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_llem.errors import ConfigError

PROMPT_COLUMN_CANDIDATES = ("prompt", "text", "question", "instruction", "input", "content")
SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True)
class PromptSet:
    """Either texts (tokenised by the backend) or token ids of an exact length."""

    source: str
    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


def builtin_prompts() -> list[str]:
    """The project's own prompt set, in file order."""
    text = resources.files("pytest_llem.datasets").joinpath("builtin_prompts.txt").read_text("utf-8")
    return [line.split("\t", 1)[1] for line in text.splitlines() if line and not line.startswith("#")]


def _take(prompts: list[str], n_prompts: int, seed: int) -> list[str]:
    """A seeded shuffle, cycled when more prompts are asked for than exist."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[order[i % len(order)]] for i in range(n_prompts)]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    raise ConfigError(
        f"dataset={str(path)!r}: unsupported file type '{suffix}'; use .jsonl, .csv or .parquet"
    )


def _prompt_column(rows: list[dict[str, Any]], path: Path, named: str | None) -> str:
    columns = list(rows[0]) if rows else []
    if named is not None:
        if named not in columns:
            raise ConfigError(f"prompt_column={named!r} is not in {path.name}; its columns are {columns}")
        return named
    for candidate in PROMPT_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    raise ConfigError(
        f"dataset={str(path)!r}: no prompt column found among {columns}; "
        f"name one with prompt_column=... (looked for {', '.join(PROMPT_COLUMN_CANDIDATES)})"
    )


def load_file(path: Path, prompt_column: str | None) -> list[str]:
    if not path.is_file():
        raise ConfigError(
            f"dataset={str(path)!r}: file not found; use 'builtin', 'synthetic:N' or a file path"
        )
    rows = _read_rows(path)
    column = _prompt_column(rows, path, prompt_column)
    prompts = [str(row[column]) for row in rows if row.get(column) not in (None, "")]
    if not prompts:
        raise ConfigError(f"dataset={str(path)!r}: column '{column}' holds no prompts")
    return prompts


def synthetic_token_ids(tokenizer: Any, length: int, n_prompts: int, seed: int) -> list[list[int]]:
    """Prompts of exactly `length` tokens: windows of the tokenised built-in text."""
    stream: list[int] = tokenizer(" ".join(builtin_prompts()), add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    out = []
    for _ in range(n_prompts):
        start = rng.randrange(0, max(1, len(stream) - length))
        window = stream[start : start + length]
        while len(window) < length:
            window = window + stream[: length - len(window)]
        out.append(window)
    return out


def load_prompts(
    dataset: str, n_prompts: int, seed: int, tokenizer: Any, prompt_column: str | None = None
) -> PromptSet:
    if dataset == "builtin":
        return PromptSet("builtin", texts=_take(builtin_prompts(), n_prompts, seed))
    if dataset.startswith(SYNTHETIC_PREFIX):
        raw = dataset[len(SYNTHETIC_PREFIX) :]
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(
                f"dataset={dataset!r}: synthetic length must be a positive integer, e.g. 'synthetic:128'"
            )
        return PromptSet(dataset, token_ids=synthetic_token_ids(tokenizer, int(raw), n_prompts, seed))
    path = Path(dataset).expanduser()
    return PromptSet(str(path), texts=_take(load_file(path, prompt_column), n_prompts, seed))
