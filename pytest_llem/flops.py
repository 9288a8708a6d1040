"""FLOPs of a generation workload.

PaLM convention (Chowdhery et al. 2022, appendix B): 2 x N_non_embedding FLOPs per token
processed, where N excludes the token and position embedding tables. The tables are found
structurally (the input-embedding module the model declares, and any other nn.Embedding),
so GPT-2's `wte`/`wpe` count as embeddings although their names do not say so. A tied LM
head shares the token table and is therefore excluded once; an untied head is counted.
"""

from __future__ import annotations

from typing import Any

from pytest_llem.results import FlopsResult


def embedding_parameter_ids(model: Any) -> set[int]:
    import torch

    tables: set[int] = set()
    get_input = getattr(model, "get_input_embeddings", None)
    if callable(get_input):
        module = get_input()
        if module is not None:
            tables.update(id(p) for p in module.parameters())
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            tables.update(id(p) for p in module.parameters())
    return tables


def non_embedding_parameters(model: Any) -> int:
    excluded = embedding_parameter_ids(model)
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():  # parameters() already yields tied weights once
        if id(parameter) in excluded or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def palm_flops(model: Any, tokens_processed: int, output_tokens: int) -> FlopsResult:
    n = non_embedding_parameters(model)
    flops = 2.0 * n * tokens_processed
    return FlopsResult(
        method="palm",
        confidence="medium",
        non_embedding_parameters=n,
        tokens_processed=tokens_processed,
        flops=flops,
        flops_per_output_token=flops / output_tokens if output_tokens else 0.0,
        notes="2 * N_non_embedding * tokens through a forward pass; attention score FLOPs and the LM head "
        "(when tied) are not included; padding is not counted",
    )


def count_forward_flops(model: Any, **inputs: Any) -> float:
    """FLOPs of one forward pass as torch.utils.flop_counter counts them (matmuls and attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return float(counter.get_total_flops())


def count_generate_flops(generate: Any) -> float:
    """FLOPs of a whole generate call (every forward pass, padding included)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        generate()
    return float(counter.get_total_flops())
