"""The transformers backend on the real (tiny) model."""

import torch

from pytest_llem.datasets import load_prompts
from pytest_llem.engines import get_backend
from pytest_llem.models import resolve_model


def _loaded():
    backend = get_backend("transformers")
    backend.set_threads(1)
    return backend, backend.load(str(resolve_model("tiny").path), "float32", "cpu", {})


def test_left_padding_and_exact_input_token_count():
    backend, loaded = _loaded()
    prompts = load_prompts("builtin", 4, 0, loaded.tokenizer)
    batches = backend.prepare(loaded, prompts, 4, 256)
    assert len(batches) == 1
    batch = batches[0]
    lengths = [len(ids) for ids in loaded.tokenizer(prompts.texts)["input_ids"]]
    assert batch.input_tokens == sum(lengths)
    assert int(batch.attention_mask.sum()) == sum(lengths)
    # left padding: every row ends with real tokens
    assert bool(batch.attention_mask[:, -1].all())


def test_fixed_length_generation_counts_every_requested_token():
    backend, loaded = _loaded()
    batch = backend.prepare(loaded, load_prompts("builtin", 3, 0, loaded.tokenizer), 3, 256)[0]
    out = backend.generate(loaded, batch, 12, fixed_length=True)
    assert out.per_sequence_tokens == [12, 12, 12]
    assert out.steps == 12
    assert 0 < out.prefill_s < out.e2e_s
    assert out.time_per_output_token_s is not None and out.time_per_output_token_s > 0


def test_free_length_generation_stops_at_eos_and_counts_through_it():
    backend, loaded = _loaded()
    batch = backend.prepare(loaded, load_prompts("builtin", 2, 0, loaded.tokenizer), 2, 256)[0]
    # Make the token greedy decoding picks first the EOS token: the count must stop there.
    with torch.inference_mode():
        first = (
            loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            .logits[:, -1]
            .argmax(-1)
        )
    loaded.eos_token_ids = (int(first[0]),)
    loaded.model.generation_config.eos_token_id = int(first[0])
    out = backend.generate(loaded, batch, 10, fixed_length=False)
    assert out.per_sequence_tokens[0] == 1
    assert out.output_tokens < 20
