"""Shared by the overhead benchmarks: the bare-transformers baseline and ABBA pairing.

A shared 2-core VM is noisy (single passes vary by +-20%), so a comparison of two ways to run
the same work alternates them in adjacent pairs, swapping which goes first each pair, and
reports the median of the per-pair ratios: drift and order effects cancel inside a pair.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from pytest_llem.datasets import load_prompts
from pytest_llem.engines import LoadedModel
from pytest_llem.schema.config import ExperimentConfig

# Both overhead benchmarks: short SmolLM2 passes, one thread (see the module docstring).
PAIRED_SETTINGS = {
    "model": "smollm2-135m",
    "dtype": "bfloat16",
    "batch_size": 4,
    "n_prompts": 4,
    "max_new_tokens": 16,
    "num_threads": 1,
}
PAIRS = 40


def bare_batches(loaded: LoadedModel, config: ExperimentConfig) -> list[Any]:
    """The experiment's prompts, tokenised the way a plain transformers user would."""
    tokenizer = loaded.tokenizer
    prompts = load_prompts(config.dataset, config.n_prompts, config.seed, tokenizer).texts
    assert prompts is not None, "the paired benchmarks' dataset is text prompts"
    return [
        tokenizer(prompts[i : i + config.batch_size], return_tensors="pt", padding=True)
        for i in range(0, len(prompts), config.batch_size)
    ]


def bare_generate_tokens_per_second(loaded: LoadedModel, batches: list[Any], max_new_tokens: int) -> float:
    """What a user without pytest-llem would write: generate, count, time."""
    generated = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            out = loaded.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
            generated += (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return generated / (time.perf_counter() - start)


def paired_ratios(
    numerator: Callable[[], float], denominator: Callable[[], float], pairs: int
) -> list[float]:
    """numerator()/denominator() for `pairs` adjacent pairs, alternating which runs first."""
    ratios = []
    for pair in range(pairs):
        if pair % 2 == 0:
            bottom = denominator()
            top = numerator()
        else:
            top = numerator()
            bottom = denominator()
        ratios.append(top / bottom)
    return ratios


def describe(ratios: list[float]) -> tuple[float, str]:
    quartiles = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), f"quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}"
