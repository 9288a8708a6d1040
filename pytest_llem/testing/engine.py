"""The `simulated` engine: an inference backend that runs on simulated GPUs.

It pretends to generate on `cuda:N` (backed by the simulated NVML) by advancing the
simulation's clock by a scripted time per token, so the whole experiment lifecycle -
pre-flight, baseline, warmup, thermal floor, meter windows, sampler, synchronisation - runs
without hardware, exactly and without waiting. Every
`synchronize()` and `init_device()` is appended to the simulation's event log, which the
simulated NVML shares, so tests can check the order of calls.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llem.datasets import PromptSet
from pytest_llem.engines.base import (
    EngineDefaults,
    GenerationProgress,
    LoadedModel,
    LoadSpec,
    ParameterCount,
    PreparedBatch,
    PreparedPrompts,
    ProgressObserver,
    RequestOutput,
)
from pytest_llem.engines.models import ResolvedModel
from pytest_llem.engines.tokens import IdTokenizer, prompt_token_ids
from pytest_llem.hardware import nvml_devices
from pytest_llem.hardware.clock import Clock
from pytest_llem.testing.simulation import active_simulation


class SimulatedTokenizer(IdTokenizer):
    """Whitespace tokens hashed into a small vocabulary; enough for prompt lengths."""

    vocab_size = 1000
    eos_token_id = 0
    pad_token_id = 1

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return [2 + zlib.crc32(word.encode()) % (self.vocab_size - 2) for word in text.split()]


@dataclass
class SimulatedWorkload:
    seconds_per_token: float = 0.002
    prefill_seconds_per_token: float = 0.0002
    tokens_before_eos: int | None = None  # generation stops early when set and fixed_length is off
    # a noisy machine, reproducibly: each generate call's time is scaled by exp(N(0, jitter))
    # drawn from a generator seeded with `jitter_seed` (0 = exact times, the default)
    jitter: float = 0.0
    jitter_seed: int = 0
    # a fresh process's one-time costs (lazy imports, thread pools, first kernels): the first
    # generate call's prefill takes this many seconds more, whatever the call's size
    cold_start_s: float = 0.0
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _cold: bool = field(init=False, repr=False, compare=False, default=True)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.jitter_seed)

    def scale(self) -> float:
        """The next call's time factor: 1 without jitter."""
        return math.exp(self._rng.gauss(0.0, self.jitter)) if self.jitter else 1.0

    def one_time_s(self) -> float:
        """`cold_start_s` on the first call, 0 after."""
        cold, self._cold = self._cold, False
        return self.cold_start_s if cold else 0.0


def active_backend() -> SimulatedBackend:
    """The `simulated` engine's registry entry: the backend of the active simulation."""
    return active_simulation().backend


class SimulatedBackend(EngineDefaults):
    """Static batches like transformers; every request reports the scripted token times
    (prefill, then one token every `seconds_per_token`), so latency metrics are exact."""

    name = "simulated"

    def version(self) -> str | None:
        return "simulated"

    def release(self, loaded: LoadedModel) -> None:
        self.log.append(("release", self.clock.now(), loaded.device))

    def parameter_count(self, loaded: LoadedModel) -> ParameterCount | None:
        from pytest_llem.engines.flops import non_embedding_parameters

        return ParameterCount(non_embedding_parameters(loaded.model), "module", "medium")

    def __init__(self, workload: SimulatedWorkload, log: list[tuple[str, float, Any]], clock: Clock) -> None:
        self.workload = workload
        self.log = log
        self.clock = clock

    def resolve_model(self, reference: str) -> ResolvedModel:
        return ResolvedModel(reference, Path(reference), "simulated")

    def resolve_device(self, device: str) -> str:
        if device == "auto":
            session = nvml_devices.open_session()
            return "cuda:0" if session and session.visible_devices() else "cpu"
        return "cuda:0" if device == "cuda" else device

    def device_problems(self, requested: str, device: str) -> list[str]:
        if not device.startswith("cuda"):
            return []
        session = nvml_devices.open_session()
        visible = session.visible_devices() if session else []
        index = self.gpu_indices(device)[0]
        if index >= len(visible):
            return [f"device={requested!r} but the simulation has {len(visible)} visible GPU(s)"]
        return []

    def init_device(self, device: str) -> None:
        self.log.append(("init_device", self.clock.now(), device))

    def synchronize(self, device: str) -> None:
        self.log.append(("synchronize", self.clock.now(), device))

    def load(self, spec: LoadSpec) -> LoadedModel:
        import torch

        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Embedding(1000, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 1000)
        )
        return LoadedModel(model, SimulatedTokenizer(), spec.device, spec.dtype, (0,), 1)

    def prepare(
        self, loaded: LoadedModel, prompts: PromptSet, batch_size: int, max_input_tokens: int
    ) -> PreparedPrompts:
        import torch

        sequences = prompt_token_ids(loaded.tokenizer, prompts, max_input_tokens)
        batches = []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(len(s) for s in chunk) or 1
            ids = torch.ones((len(chunk), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, sequence in enumerate(chunk):
                mask[row, width - len(sequence) :] = 1 if sequence else 0
            batches.append(PreparedBatch(ids, mask, sum(len(s) for s in chunk)))
        return PreparedPrompts(batches, [len(s) for s in sequences])

    def _board_speed(self, device: str) -> float:
        """How fast the simulated board under `device` runs now: a power limit or locked clock
        set through NVML slows generation as it lowers power (SimulatedGpu.apply_settings)."""
        if not device.startswith("cuda"):
            return 1.0
        session = nvml_devices.open_session()
        visible = session.visible_devices() if session else []
        index = self.gpu_indices(device)[0] if ":" in device else 0
        board = visible[index].nvml_index if index < len(visible) else None
        if board is None:
            return 1.0
        return active_simulation().nvml.gpus[board].speed(self.clock.now())

    def generate(
        self,
        loaded: LoadedModel,
        batch: PreparedBatch,
        max_new_tokens: int,
        fixed_length: bool,
        observer: ProgressObserver | None = None,
    ) -> list[RequestOutput]:
        """The batch's prefill, then one step per token, on the simulation's clock; with an
        observer the clock advances step by step (the same total time) and each step is
        reported, like transformers' static batches."""
        steps = max_new_tokens
        if not fixed_length and self.workload.tokens_before_eos is not None:
            steps = min(max_new_tokens, self.workload.tokens_before_eos)
        scale = self.workload.scale() / self._board_speed(loaded.device)
        prefill = (
            self.workload.prefill_seconds_per_token * batch.input_tokens * scale + self.workload.one_time_s()
        )
        per_token = self.workload.seconds_per_token * scale
        times = tuple(prefill + per_token * (k + 1) for k in range(steps))
        if observer is None:
            self.clock.sleep(prefill + per_token * steps)
        else:
            start = self.clock.now()
            for k, at in enumerate(times, start=1):
                self.clock.sleep(start + at - self.clock.now())
                observer(
                    GenerationProgress(
                        requests=batch.size,
                        first_tokens=batch.size,
                        finished=batch.size if k == steps else 0,
                        output_tokens=batch.size * k,
                        at_s=at,
                    )
                )
            self.clock.sleep(max(start + prefill + per_token * steps - self.clock.now(), 0.0))
        self.log.append(("generate", self.clock.now(), steps))
        prompt_lengths = [int(n) for n in batch.attention_mask.sum(dim=1).tolist()]
        return [
            RequestOutput(
                steps, length, times[0] if times else None, times, times[-1] if times else prefill, True
            )
            for length in prompt_lengths
        ]
