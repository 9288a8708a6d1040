"""What does the 10 Hz power/thermal sampler cost the inference it watches?

The sampler thread runs beside real SmolLM2 generation on this CPU, reading a simulated GPU
through the same NVML code path as on hardware (pytest_llem.testing), at the default 10 Hz.
Sampler on and off run as 40 adjacent pairs alternating which goes first, one thread; the
figure is the median per-pair ratio of tokens per second (on / off). Target: within 1%.
"""

import statistics
import time

import pytest
import torch

from pytest_llem import nvml_devices
from pytest_llem.datasets import load_prompts
from pytest_llem.sampler import Sampler
from pytest_llem.testing import SimulatedGpu, simulated_gpus

PAIRS = 40
SETTINGS = {
    "model": "smollm2-135m",
    "dtype": "bfloat16",
    "batch_size": 4,
    "n_prompts": 4,
    "max_new_tokens": 16,
    "num_threads": 1,
}
TARGET = 0.01


@pytest.mark.llem(**SETTINGS)
def test_sampler_costs_less_than_one_percent(llem, record_property):
    loaded = llem.load()
    config = llem.config
    tokenizer = loaded.tokenizer
    prompts = load_prompts(config.dataset, config.n_prompts, config.seed, tokenizer).texts
    batch = tokenizer(prompts, return_tensors="pt", padding=True)

    def tokens_per_second() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(
                **batch,
                max_new_tokens=16,
                min_new_tokens=16,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0] / (time.perf_counter() - start)

    with simulated_gpus([SimulatedGpu()]):
        session = nvml_devices.open_session()
        assert session is not None
        devices = session.visible_devices()

        def sampled() -> float:
            sampler = Sampler(devices, 10.0)
            sampler.start()
            try:
                return tokens_per_second()
            finally:
                assert sampler.stop(), "the sampler took no sample"

        for _ in range(3):
            tokens_per_second()
        ratios = []
        for pair in range(PAIRS):
            if pair % 2 == 0:
                off, on = tokens_per_second(), sampled()
            else:
                on, off = sampled(), tokens_per_second()
            ratios.append(on / off)
    ratio = statistics.median(ratios)
    record_property("sampler_on_over_off_tokens_per_second_ratio", round(ratio, 4))
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        f"\nsampler on / off tokens per second: median of {PAIRS} pairs {ratio:.4f} "
        f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})"
    )
    assert abs(ratio - 1.0) < TARGET, f"the sampler changes tokens per second by {ratio - 1:+.2%}"
