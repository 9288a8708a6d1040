"""The transformers (PyTorch) backend: left padding, batched greedy generate, exact timing."""

from __future__ import annotations

import time
from typing import Any

from pytest_llem.datasets import PromptSet
from pytest_llem.engines.base import GenerationOutput, LoadedModel, PreparedBatch
from pytest_llem.engines.tokens import count_output_tokens
from pytest_llem.models import ResolvedModel, resolve_model


class _FirstTokenClock:
    """A stopping criterion that never stops: it timestamps the first new token (prefill end).

    generate() calls stopping criteria once per step, after the step's token exists, so the
    first call marks the end of prefill. The device is synchronised only on that call.
    """

    def __init__(self, synchronize: Any) -> None:
        self._synchronize = synchronize
        self.first_token_s: float | None = None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if self.first_token_s is None:
            self._synchronize()
            self.first_token_s = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class TransformersBackend:
    name = "transformers"

    def resolve_model(self, reference: str) -> ResolvedModel:
        return resolve_model(reference)

    def device_problems(self, requested: str, device: str) -> list[str]:
        import torch

        if not device.startswith("cuda"):
            return []
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            return [
                f"device={requested!r} but CUDA is not available (torch {torch.__version__} is {built}); "
                "use device='cpu' or install a CUDA build of torch and an NVIDIA driver"
            ]
        if self.gpu_indices(device)[0] >= torch.cuda.device_count():
            return [
                f"device={requested!r} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "pick an index below that or check CUDA_VISIBLE_DEVICES"
            ]
        return []

    def resolve_device(self, device: str) -> str:
        import torch

        if device == "auto":
            return "cuda:0" if torch.cuda.is_available() else "cpu"
        return "cuda:0" if device == "cuda" else device

    def gpu_indices(self, device: str) -> tuple[int, ...]:
        return (int(device.split(":")[1]),) if device.startswith("cuda:") else ()

    def init_device(self, device: str) -> None:
        import torch

        if device.startswith("cuda"):
            torch.zeros(1, device=device)
            torch.cuda.synchronize(device)

    def set_threads(self, num_threads: int) -> None:
        import torch

        torch.set_num_threads(num_threads)

    def synchronize(self, device: str) -> None:
        import torch

        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    def load(self, path: str, dtype: str, device: str, passthrough_kwargs: dict[str, Any]) -> LoadedModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        load_kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
        load_kwargs.update(passthrough_kwargs)  # merged last: the user's word wins
        model: Any = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
        if "device_map" not in passthrough_kwargs:
            model = model.to(device)
        model.eval()
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)
        return LoadedModel(model, tokenizer, device, dtype, eos_ids, int(tokenizer.pad_token_id))

    def prepare(
        self, loaded: LoadedModel, prompts: PromptSet, batch_size: int, max_input_tokens: int
    ) -> list[PreparedBatch]:
        import torch

        tokenizer = loaded.tokenizer
        if prompts.token_ids is not None:
            sequences = [ids[:max_input_tokens] for ids in prompts.token_ids]
        else:
            assert prompts.texts is not None
            encoded = tokenizer(prompts.texts, truncation=True, max_length=max_input_tokens)
            sequences = [list(ids) for ids in encoded["input_ids"]]
        batches = []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(len(seq) for seq in chunk)
            ids = torch.full((len(chunk), width), loaded.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                if seq:
                    ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                    mask[row, width - len(seq) :] = 1
            batches.append(
                PreparedBatch(ids.to(loaded.device), mask.to(loaded.device), sum(len(seq) for seq in chunk))
            )
        return batches

    def generate(
        self, loaded: LoadedModel, batch: PreparedBatch, max_new_tokens: int, fixed_length: bool
    ) -> GenerationOutput:
        import torch
        from transformers import StoppingCriteriaList

        clock = _FirstTokenClock(lambda: self.synchronize(loaded.device))
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "pad_token_id": loaded.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([clock]),
        }
        if fixed_length:
            options["min_new_tokens"] = max_new_tokens
        with torch.inference_mode():
            self.synchronize(loaded.device)
            start = time.perf_counter()
            output = loaded.model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, **options
            )
            self.synchronize(loaded.device)
            end = time.perf_counter()
        new_tokens = output[:, batch.input_ids.shape[1] :]
        first = clock.first_token_s if clock.first_token_s is not None else end
        return GenerationOutput(
            per_sequence_tokens=count_output_tokens(new_tokens, loaded.eos_token_ids),
            input_tokens=batch.input_tokens,
            steps=int(new_tokens.shape[1]),
            e2e_s=end - start,
            prefill_s=first - start,
        )
