"""FLOPs of a generation workload.

PaLM convention (Chowdhery et al. 2022, appendix B): 2 x N_non_embedding FLOPs per token
processed, where N excludes the token and position embedding tables. The tables are found
structurally (the input-embedding module the model declares, and any other nn.Embedding),
so GPT-2's `wte`/`wpe` count as embeddings although their names do not say so. A tied LM
head shares the token table and is therefore excluded once; an untied head is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from pytest_llem.schema.results import FlopsResult

if TYPE_CHECKING:
    from pytest_llem.engines.base import ParameterCount

PALM_NOTES = (
    "2 * N_non_embedding * tokens through a forward pass; attention score FLOPs and the LM head "
    "(when tied) are not included; padding is not counted"
)


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
    """PaLM FLOPs of an nn.Module (parameters counted, embeddings found structurally)."""
    n = non_embedding_parameters(model)
    flops = 2.0 * n * tokens_processed
    return FlopsResult(
        method="palm",
        confidence="medium",
        non_embedding_parameters=n,
        tokens_processed=tokens_processed,
        flops=flops,
        flops_per_output_token=flops / output_tokens if output_tokens else 0.0,
        notes=PALM_NOTES,
    )


def palm_from_count(
    count: ParameterCount, tokens_processed: int, output_tokens: int, counted_flops: float | None = None
) -> FlopsResult:
    """PaLM FLOPs from a parameter count an engine reported (module or config shapes), with
    torch's counted FLOPs beside them where they were counted."""
    flops = 2.0 * count.non_embedding * tokens_processed
    notes = PALM_NOTES + (f"; {count.notes}" if count.notes else "")
    return FlopsResult(
        method="palm",
        confidence=cast(Literal["high", "medium", "low"], count.confidence),
        non_embedding_parameters=count.non_embedding,
        parameter_source=cast(Literal["module", "config"], count.source),
        tokens_processed=tokens_processed,
        flops=flops,
        flops_per_output_token=flops / output_tokens if output_tokens else 0.0,
        counted_flops=counted_flops,
        notes=notes,
    )


# -- from the architecture's shapes (engines without an nn.Module: vLLM, llama.cpp) ---------


@dataclass(frozen=True)
class ModelShape:
    """The shapes that fix a decoder-only transformer's non-embedding parameter count.

    `family` "llama": gated MLP (gate, up, down), RMSNorm (one vector per norm), no biases,
    grouped-query attention (k/v projections of kv_heads * head_dim). "gpt2": 4x MLP with
    biases, LayerNorm (weight and bias), fused qkv with bias, learned position table.
    """

    family: Literal["llama", "gpt2"]
    hidden_size: int
    layers: int
    intermediate_size: int
    heads: int
    kv_heads: int
    vocab_size: int
    head_dim: int
    tied_embeddings: bool

    def non_embedding_parameters(self) -> int:
        """Every weight but the token (and position) embedding tables; an untied LM head
        counts (it is a matmul in every step), a tied one is the token table."""
        d, inner = self.hidden_size, self.intermediate_size
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.family == "llama":
            attention = d * q_width + 2 * d * kv_width + q_width * d
            per_layer = attention + 3 * d * inner + 2 * d  # two RMSNorm weights
            final_norm = d
        else:
            attention = d * 3 * d + 3 * d + d * d + d  # fused qkv and output projection, biased
            per_layer = attention + 2 * d * inner + inner + d + 4 * d  # MLP with biases, two LayerNorms
            final_norm = 2 * d
        head = 0 if self.tied_embeddings else d * self.vocab_size
        return self.layers * per_layer + final_norm + head


LLAMA_LIKE = {"llama", "mistral", "qwen2", "smollm", "smollm2", "granite", "olmo", "internlm2"}


def _shape_confidence(architecture: str) -> str:
    """ "medium" for families whose layout ModelShape writes down (the same confidence as a
    counted module: the convention itself is the approximation), "low" for a guess."""
    return "medium" if architecture in LLAMA_LIKE or architecture == "gpt2" else "low"


def shape_from_hf_config(config: Mapping[str, Any]) -> tuple[ModelShape, str]:
    """A ModelShape from a transformers config.json, and the architecture name it assumed."""
    model_type = str(config.get("model_type", "")).lower()
    if model_type == "gpt2":
        d = int(config["n_embd"])
        inner = int(config.get("n_inner") or 4 * d)
        heads = int(config["n_head"])
        shape = ModelShape(
            "gpt2",
            d,
            int(config["n_layer"]),
            inner,
            heads,
            heads,
            int(config["vocab_size"]),
            d // heads,
            bool(config.get("tie_word_embeddings", True)),
        )
        return shape, model_type
    d = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    shape = ModelShape(
        "llama",
        d,
        int(config["num_hidden_layers"]),
        int(config["intermediate_size"]),
        heads,
        int(config.get("num_key_value_heads") or heads),
        int(config["vocab_size"]),
        int(config.get("head_dim") or d // heads),
        bool(config.get("tie_word_embeddings", False)),
    )
    return shape, model_type


def shape_from_gguf_metadata(
    metadata: Mapping[str, str], vocab_size: int, has_output_tensor: bool
) -> tuple[ModelShape, str]:
    """A ModelShape from GGUF metadata (`general.architecture` and `<arch>.*` keys, values as
    llama-cpp-python's `Llama.metadata` gives them: strings). The vocabulary size comes from
    the loaded vocabulary, and whether the LM head is tied from the absence of an `output`
    tensor (GGUF stores a tied head only once, as `token_embd`)."""
    arch = metadata["general.architecture"]

    def key(name: str) -> int:
        return int(metadata[f"{arch}.{name}"])

    d = key("embedding_length")
    heads = key("attention.head_count")
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", d // heads))
    family: Literal["llama", "gpt2"] = "gpt2" if arch == "gpt2" else "llama"
    shape = ModelShape(
        family,
        d,
        key("block_count"),
        key("feed_forward_length"),
        heads,
        kv_heads,
        vocab_size,
        head_dim,
        not has_output_tensor,
    )
    return shape, arch


def count_from_shape(shape: ModelShape, architecture: str, where: str) -> ParameterCount:
    from pytest_llem.engines.base import ParameterCount

    return ParameterCount(
        shape.non_embedding_parameters(),
        source="config",
        confidence=_shape_confidence(architecture),
        notes=f"computed from {where} shapes ({architecture}, {shape.family} layout)",
    )


def count_from_hf_config(config: Mapping[str, Any]) -> ParameterCount | None:
    """Non-embedding parameters from a transformers config (config.json's contents); None where
    its shapes cannot be read."""
    try:
        shape, architecture = shape_from_hf_config(config)
    except (KeyError, TypeError, ValueError):
        return None
    return count_from_shape(shape, architecture, "config.json")


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
