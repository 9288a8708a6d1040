"""FLOPs: the PaLM estimate against torch's own FLOP counter on the tiny GPT-2."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from pytest_llem.engines.flops import (
    count_forward_flops,
    count_from_shape,
    embedding_parameter_ids,
    non_embedding_parameters,
    palm_flops,
    shape_from_hf_config,
)
from pytest_llem.engines.models import resolve_model


def _tiny() -> GPT2LMHeadModel:
    model = AutoModelForCausalLM.from_pretrained(str(resolve_model("tiny").path), attn_implementation="eager")
    assert isinstance(model, GPT2LMHeadModel)  # the tiny model is a GPT-2
    return model


def test_gpt2_embedding_tables_are_found_structurally_not_by_name() -> None:
    model = _tiny()
    names = {name for name, p in model.named_parameters() if id(p) in embedding_parameter_ids(model)}
    assert names == {"transformer.wte.weight", "transformer.wpe.weight"}  # no "embed" in either name
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    assert (
        non_embedding_parameters(model)
        == total - config.vocab_size * config.n_embd - config.n_positions * config.n_embd
    )


def test_counted_flops_exceed_palm_by_exactly_lm_head_plus_attention_minus_vector_params() -> None:
    """For one forward pass over T tokens (batch 1, no padding), with d = hidden size,
    V = vocabulary, L = layers:

      counted = T * (L * 2 * 12 d^2 + 2 d V) + L * 4 T^2 d     (matmuls: blocks, tied LM head, QK^T and AV)
      PaLM    = 2 * N_non_embedding * T, N = L * (12 d^2 + 13 d) + 2 d
                (13 d per layer: 9 d of biases + 4 d of LayerNorm; 2 d for the final LayerNorm)

    so the gap is T * 2 d V + L * 4 T^2 d - 2 T (13 L d + 2 d): the LM head and attention scores
    the convention leaves out, minus the vector parameters it counts but no matmul touches.
    """
    model = _tiny()
    d, vocab, layers = model.config.n_embd, model.config.vocab_size, model.config.n_layer
    tokens = 24
    input_ids = torch.arange(3, 3 + tokens).unsqueeze(0)
    counted = count_forward_flops(model, input_ids=input_ids)
    palm = palm_flops(model, tokens_processed=tokens, output_tokens=1).flops
    expected_gap = (
        tokens * 2 * d * vocab + layers * 4 * tokens**2 * d - 2 * tokens * (13 * layers * d + 2 * d)
    )
    assert counted - palm == expected_gap
    # on this deliberately tiny model (d=64, V=512) the LM head alone is a third of the work
    assert 1.3 < counted / palm < 1.45


def test_palm_result_records_method_and_confidence() -> None:
    result = palm_flops(_tiny(), tokens_processed=100, output_tokens=40)
    assert result.method == "palm" and result.confidence == "medium"
    assert result.flops_per_output_token == result.flops / 40


def test_config_shapes_give_the_counted_non_embedding_parameters_of_gpt2() -> None:
    model = _tiny()
    shape, architecture = shape_from_hf_config(model.config.to_dict())
    assert architecture == "gpt2"
    assert shape.non_embedding_parameters() == non_embedding_parameters(model)


@pytest.mark.parametrize("tied", [True, False])
def test_config_shapes_give_the_counted_non_embedding_parameters_of_a_llama(tied: bool) -> None:
    """Grouped-query attention, gated MLP, RMSNorm; an untied LM head counts, a tied one does not."""
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    shape, _ = shape_from_hf_config(config.to_dict())
    count = count_from_shape(shape, "llama", "config.json")
    assert count.non_embedding == non_embedding_parameters(model)
    assert (count.source, count.confidence) == ("config", "medium")
    head = 0 if tied else 48 * 300  # an untied head is one more hidden x vocab matmul
    tied_shape, _ = shape_from_hf_config({**config.to_dict(), "tie_word_embeddings": True})
    assert count.non_embedding == tied_shape.non_embedding_parameters() + head


def test_an_unknown_architecture_is_low_confidence() -> None:
    config = {"model_type": "mystery", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1}
    shape, architecture = shape_from_hf_config({**config, "intermediate_size": 16, "vocab_size": 10})
    assert count_from_shape(shape, architecture, "config.json").confidence == "low"
