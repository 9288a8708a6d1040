"""Does measuring cost throughput? llem.run() against a bare `model.generate` loop.

Same model, prompts, batch size, generation settings and thread count, in one process.
A shared 2-core VM is noisy (single passes vary by +-20%, and with 2 threads a preempted
thread stalls the other at every barrier), so this benchmark uses one thread on both sides,
runs the two sides as adjacent pairs alternating which goes first (ABBA), and reports the
median of the per-pair ratios llem/bare of tokens per second: drift and order effects cancel
inside a pair. The ratio is recorded as a JUnit property and printed; the target is >= 0.97.

The paired rounds call `llem_session.run()`, which is exactly what `llem.run()` calls, so
the session report keeps one row for this test instead of one per round.
"""

import statistics
import time

import pytest
import torch

from pytest_llem.datasets import load_prompts

PAIRS = 40
SETTINGS = {
    "model": "smollm2-135m",
    "dtype": "bfloat16",
    "batch_size": 4,
    "n_prompts": 4,
    "max_new_tokens": 16,
    "num_threads": 1,
}
TARGET_RATIO = 0.97


def bare_generate_tokens_per_second(model, batches, config, pad_token_id) -> float:
    """What a user without pytest-llem would write: generate, count, time."""
    generated = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            out = model.generate(
                **batch,
                max_new_tokens=config.max_new_tokens,
                min_new_tokens=config.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_token_id,
            )
            generated += (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return generated / (time.perf_counter() - start)


@pytest.mark.llem(**SETTINGS)
def test_llem_run_matches_bare_generate(llem, llem_session, record_property, request):
    loaded = llem.load()
    config = llem.config
    tokenizer = loaded.tokenizer
    prompts = load_prompts(config.dataset, config.n_prompts, config.seed, tokenizer).texts
    batches = [
        tokenizer(prompts[i : i + config.batch_size], return_tensors="pt", padding=True)
        for i in range(0, len(prompts), config.batch_size)
    ]
    llem.run(repeats=1)  # 5 warmup calls, and caches the idle baseline
    round_config = llem.settings(repeats=1, warmup=0)

    def llem_tokens_per_second() -> float:
        result = llem_session.run(round_config, request.node.nodeid)
        assert result.status == "passed", result.error
        return result.tokens_per_second

    ratios = []
    for pair in range(PAIRS):
        if pair % 2 == 0:
            bare = bare_generate_tokens_per_second(loaded.model, batches, config, tokenizer.pad_token_id)
            measured = llem_tokens_per_second()
        else:
            measured = llem_tokens_per_second()
            bare = bare_generate_tokens_per_second(loaded.model, batches, config, tokenizer.pad_token_id)
        ratios.append(measured / bare)
    ratio = statistics.median(ratios)
    record_property("llem_over_bare_tokens_per_second_ratio", round(ratio, 4))
    print(
        f"\nllem.run / bare generate tokens per second: median of {PAIRS} pairs {ratio:.3f} "
        f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f}; "
        f"threads={config.num_threads}, {config.dtype}, batch {config.batch_size})"
    )
    assert ratio >= TARGET_RATIO, f"llem.run throughput is {ratio:.3f} of a bare generate loop"
