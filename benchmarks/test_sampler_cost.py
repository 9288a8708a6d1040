"""What does the 10 Hz power/thermal sampler cost the inference it watches?

The sampler thread runs beside real SmolLM2 generation on this CPU, reading a simulated GPU
through the same NVML code path as on hardware (pytest_llem.testing), at the default 10 Hz.
Sampler on and off run as 40 ABBA pairs (see _pairing.py), one thread; the figure is the
median per-pair ratio of tokens per second (on / off). Target: within 1%.
"""

import pytest
from _pairing import bare_batches, bare_generate_tokens_per_second, describe, paired_ratios

from pytest_llem import nvml_devices
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
    batches = bare_batches(loaded, llem.config)

    def unsampled() -> float:
        return bare_generate_tokens_per_second(loaded, batches, llem.config.max_new_tokens)

    with simulated_gpus([SimulatedGpu()]):
        session = nvml_devices.open_session()
        assert session is not None
        devices = session.visible_devices()

        def sampled() -> float:
            sampler = Sampler(devices, 10.0)
            sampler.start()
            try:
                return unsampled()
            finally:
                assert sampler.stop(), "the sampler took no sample"

        for _ in range(3):
            unsampled()
        ratio, spread = describe(paired_ratios(sampled, unsampled, PAIRS))
    record_property("sampler_on_over_off_tokens_per_second_ratio", round(ratio, 4))
    print(f"\nsampler on / off tokens per second: median of {PAIRS} pairs {ratio:.4f} ({spread})")
    assert abs(ratio - 1.0) < TARGET, f"the sampler changes tokens per second by {ratio - 1:+.2%}"
