"""What an inference backend must do for the experiment lifecycle, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pytest_llem.datasets import PromptSet
from pytest_llem.models import ResolvedModel


@dataclass
class LoadedModel:
    """A model kept loaded across the experiments of a session that share its cache key."""

    model: Any
    tokenizer: Any
    device: str
    dtype: str
    eos_token_ids: tuple[int, ...]
    pad_token_id: int


@dataclass
class PreparedBatch:
    """A tokenised, left-padded batch, already on the model's device."""

    input_ids: Any
    attention_mask: Any
    input_tokens: int  # real prompt tokens, padding excluded

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class GenerationOutput:
    """One batched generate call, timed between synchronisation points."""

    per_sequence_tokens: list[int]
    input_tokens: int
    steps: int  # new positions generated (the longest sequence)
    e2e_s: float
    prefill_s: float

    @property
    def output_tokens(self) -> int:
        return sum(self.per_sequence_tokens)

    @property
    def forward_tokens(self) -> int:
        """Tokens that went through a forward pass: every prompt token, every generated one but the last."""
        return self.input_tokens + sum(max(count - 1, 0) for count in self.per_sequence_tokens)

    @property
    def time_per_output_token_s(self) -> float | None:
        return (self.e2e_s - self.prefill_s) / (self.steps - 1) if self.steps > 1 else None


class InferenceBackend(Protocol):
    name: str

    def resolve_model(self, reference: str) -> ResolvedModel:
        """Make a model reference loadable, or raise ModelUnavailable saying what to do."""

    def device_problems(self, requested: str, device: str) -> list[str]:
        """Pre-flight problems with the device (empty when it can be used)."""

    def resolve_device(self, device: str) -> str:
        """'auto'/'cuda' -> a concrete device string such as 'cpu' or 'cuda:0'."""

    def gpu_indices(self, device: str) -> tuple[int, ...]:
        """CUDA indices the device string occupies (empty for CPU)."""

    def init_device(self, device: str) -> None:
        """Create the accelerator context (before the idle baseline)."""

    def set_threads(self, num_threads: int) -> None: ...

    def load(self, path: str, dtype: str, device: str, passthrough_kwargs: dict[str, Any]) -> LoadedModel: ...

    def prepare(
        self, loaded: LoadedModel, prompts: PromptSet, batch_size: int, max_input_tokens: int
    ) -> list[PreparedBatch]:
        """Tokenise and pad outside the measurement window."""

    def generate(
        self, loaded: LoadedModel, batch: PreparedBatch, max_new_tokens: int, fixed_length: bool
    ) -> GenerationOutput: ...

    def synchronize(self, device: str) -> None:
        """Wait until all queued device work has finished."""
