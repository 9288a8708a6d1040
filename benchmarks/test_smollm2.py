"""The project's own benchmark suite: SmolLM2-135M-Instruct on this machine's CPU.

Run with `pytest benchmarks/ --llem-energy=auto`. Each parametrisation is one experiment:
8 built-in prompts, 64 new tokens each (fixed length, greedy), 5 warmup calls, 3 repeats.
"""

import pytest

from pytest_llem.plugin.fixture import LlemFixture

N_PROMPTS = 8
NEW_TOKENS = 64


@pytest.mark.llem(model="smollm2-135m", max_new_tokens=NEW_TOKENS, n_prompts=N_PROMPTS)
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_smollm2(llem: LlemFixture, batch_size: int, dtype: str) -> None:
    result = llem.run(batch_size=batch_size, dtype=dtype)
    assert (
        result.output_tokens == N_PROMPTS * NEW_TOKENS
    )  # one pass over the prompts, whatever the window holds
    assert result.tokens_per_second > 0
