"""Counting output tokens exactly: per sequence, nothing after the first EOS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
