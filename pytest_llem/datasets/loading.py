"""Turn `dataset` + `n_prompts` into the prompts of one experiment, deterministically.

File datasets are read by `files.py` (errors name the file, the line or row, and the fix);
`check_dataset` is the pre-flight read, before any model loads."""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pytest_llem.datasets.files import read_prompts
from pytest_llem.schema.dataset_names import dataset_path, is_file_dataset, synthetic_length
from pytest_llem.schema.errors import ConfigError


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


def check_dataset(dataset: str, prompt_column: str | None) -> None:
    """Pre-flight: read and validate a file dataset before any model loads."""
    if is_file_dataset(dataset):
        read_prompts(dataset_path(dataset), prompt_column)


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
    try:
        length = synthetic_length(dataset)
    except ValueError as exc:
        raise ConfigError(f"dataset={dataset!r}: {exc}") from None
    if length is not None:
        return PromptSet(dataset, token_ids=synthetic_token_ids(tokenizer, length, n_prompts, seed))
    path = dataset_path(dataset)
    return PromptSet(str(path), texts=_take(read_prompts(path, prompt_column), n_prompts, seed))
