"""On a real NVIDIA GPU: the nvml and zeus meters, and `auto`, measure the same work.

Skipped without CUDA. Each figure is printed and recorded in the report; the checks are that
every experiment passed and its energy is a positive measurement (not an estimate). Run on an
H100 (driver 580): nvml 398 mJ/token and zeus 403 mJ/token at batch 1, 30.0 and 27.8 mJ at
batch 16 (see the README's "Measured on a GPU").
"""

import pytest

from pytest_llem.plugin.fixture import LlemFixture

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the real-GPU meter check needs one", allow_module_level=True)


@pytest.mark.parametrize("meter", ["nvml", "zeus", "auto"])
@pytest.mark.parametrize("batch_size", [1, 16])
def test_tiny_on_gpu(llem: LlemFixture, meter: str, batch_size: int) -> None:
    result = llem.run(
        model="tiny",
        device="cuda",
        dtype="float16",
        batch_size=batch_size,
        n_prompts=16,
        max_new_tokens=128,
        repeats=3,
        warmup={"n_warmup": 2, "thermal_floor_s": 0},
        energy={"meter": meter, "baseline_s": 10},
    )
    assert result.status == "passed"
    assert result.energy is not None
    assert result.energy.measured, result.energy
    assert result.energy_j is not None and result.energy_j > 0
    print(
        meter,
        batch_size,
        result.energy.source,
        result.energy_j,
        result.window_s,
        result.energy_per_output_token_j,
        [w.flag for w in result.warnings],
    )
