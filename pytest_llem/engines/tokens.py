"""Counting output tokens exactly: per sequence, nothing after the first EOS."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llem.datasets import PromptSet


def count_output_tokens(new_token_ids: Any, eos_token_ids: Sequence[int]) -> list[int]:
    """Generated tokens per sequence, up to and including the first EOS.

    `new_token_ids` holds only the positions generate() appended (prompt and its left padding
    already sliced off); what follows a sequence's EOS is padding added while the rest of the
    batch kept generating, and is not counted.
    """
    import torch

    ids = torch.as_tensor(new_token_ids)
    if ids.ndim != 2:
        raise ValueError(f"expected a (batch, new_tokens) tensor, got shape {tuple(ids.shape)}")
    width = ids.shape[1]
    if width == 0:
        return [0] * ids.shape[0]
    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for eos in eos_token_ids:
        is_eos |= ids == eos
    first_eos = torch.where(
        is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, torch.full_like(ids[:, 0], width)
    )
    return [int(n) for n in first_eos.tolist()]


def prompt_token_ids(tokenizer: Any, prompts: PromptSet, max_input_tokens: int) -> list[list[int]]:
    """Every prompt as token ids, at most `max_input_tokens` each: prompts that come as ids
    are cut, texts go through the model's tokenizer (transformers' call signature)."""
    if prompts.token_ids is not None:
        return [list(ids[:max_input_tokens]) for ids in prompts.token_ids]
    encoded = tokenizer(list(prompts.texts or []), truncation=True, max_length=max_input_tokens)
    return [list(ids) for ids in encoded["input_ids"]]


class IdTokenizer(ABC):
    """transformers' tokenizer call signature (`tokenizer(texts, truncation=..., max_length=...)
    ["input_ids"]`, which the prompt loaders use) over an engine's own `encode`."""

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """The engine's token ids for `text`."""

    def __call__(
        self,
        texts: str | list[str],
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        single = isinstance(texts, str)
        rows = []
        for text in [texts] if single else texts:
            ids = self.encode(str(text), add_special_tokens)
            rows.append(ids[:max_length] if truncation and max_length else ids)
        return {"input_ids": rows[0] if single else rows}
