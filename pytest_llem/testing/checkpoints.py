"""Local GPT-2-shaped checkpoints of a chosen depth, for gate and regression tests.

A project's own model usually lives in a local directory; rebuilding that directory with more
blocks changes the work per token while the experiment config (and its hash) stays the same,
which is exactly what a performance regression in a pull request looks like.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def build_block_model(
    directory: Path, layers: int, width: int = 256, heads: int = 4, seed: int = 0, inner: int | None = None
) -> None:
    """Write a GPT-2-shaped checkpoint (seeded weights, the `tiny` tokenizer) to `directory`;
    `inner` is the MLP's hidden width (GPT-2's default: 4 x width), a finer knob on the work
    per token than the number of blocks."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from pytest_llem.engines.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny").path))
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        n_inner=inner,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(state)
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
