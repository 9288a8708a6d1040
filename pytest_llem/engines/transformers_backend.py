"""The transformers (PyTorch) backend: left padding, batched greedy generate, exact timing."""

from __future__ import annotations

import time
from importlib import metadata
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
from pytest_llem.engines.failures import EngineLoadError, first_line
from pytest_llem.engines.models import ResolvedModel, resolve_model
from pytest_llem.engines.tokens import count_output_tokens, prompt_token_ids


class _StepClock:
    """A stopping criterion that never stops: it timestamps every generation step.

    generate() calls stopping criteria once per step, after the step's token exists, so call
    k marks when the k-th new token of every sequence in the batch existed (the first call is
    the end of prefill). The device is synchronised before each timestamp so the time is when
    the token existed, not when its kernels were queued (generate already waits for the
    device each step to decide whether to stop, so this costs next to nothing). With an
    observer, each step's progress is counted from the tokens so far and reported.
    """

    def __init__(
        self,
        synchronize: Any,
        max_new_tokens: int,
        eos_token_ids: tuple[int, ...],
        fixed_length: bool,
        observer: ProgressObserver | None,
    ) -> None:
        self._synchronize = synchronize
        self._max_new_tokens = max_new_tokens
        self._eos = eos_token_ids
        self._fixed_length = fixed_length
        self._observer = observer
        self._done: Any = None  # free length: which sequences have put out their EOS
        self._eos_ids: Any = None  # free length: the EOS ids as a tensor
        self._generated = 0
        self.start = time.perf_counter()
        self.step_times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self._synchronize()
        self.step_times.append(time.perf_counter())
        if self._observer is not None:
            self._observe(input_ids)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def _observe(self, input_ids: Any) -> None:
        """The step's progress from its newest token only (a few tensor ops; none at fixed
        length, where every sequence runs to `max_new_tokens`)."""
        import torch

        assert self._observer is not None
        size, steps = int(input_ids.shape[0]), len(self.step_times)
        if self._fixed_length:
            finished = size if steps >= self._max_new_tokens else 0
            self._generated = size * steps
        else:
            if self._done is None:  # built once per call, on the batch's device
                self._done = torch.zeros(size, dtype=torch.bool, device=input_ids.device)
                self._eos_ids = torch.tensor(self._eos, device=input_ids.device)
            self._generated += size - int(self._done.sum())  # a finished sequence only pads
            self._done |= torch.isin(input_ids[:, -1], self._eos_ids)
            finished = size if steps >= self._max_new_tokens else int(self._done.sum())
        self._observer(
            GenerationProgress(
                requests=size,
                first_tokens=size,
                finished=finished,
                output_tokens=self._generated,
                at_s=self.step_times[-1] - self.start,
            )
        )


class TransformersBackend(EngineDefaults):
    """Static batches of `batch_size` prompts through `model.generate`.

    Latency is per sequence where transformers allows: every sequence of a batch shares the
    batch's prefill and step times (batch-level), and finishes at its own EOS.
    """

    name = "transformers"

    def version(self) -> str | None:
        try:
            return metadata.version("transformers")
        except metadata.PackageNotFoundError:
            return None

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

    def init_device(self, device: str) -> None:
        import torch

        if device.startswith("cuda"):
            torch.zeros(1, device=device)
            torch.cuda.synchronize(device)

    def synchronize(self, device: str) -> None:
        import torch

        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    def load(self, spec: LoadSpec) -> LoadedModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        path, dtype, device, passthrough_kwargs = (
            str(spec.model.path),
            spec.dtype,
            spec.device,
            spec.passthrough_kwargs,
        )
        load_kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
        load_kwargs.update(passthrough_kwargs)  # merged last: the user's word wins
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model: Any = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
            if "device_map" not in passthrough_kwargs:
                model = model.to(device)
        except Exception as exc:
            raise EngineLoadError(
                f"transformers could not load {spec.model.reference}"
                + ("" if spec.model.reference == path else f" from {path}")
                + f" ({dtype} on {device}): "
                f"{first_line(exc)}. Fix: check the model's files (config.json, weights, tokenizer) and "
                f"passthrough_kwargs {sorted(passthrough_kwargs) or '(none)'}, which go to from_pretrained"
            ) from exc
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)
        return LoadedModel(
            model,
            tokenizer,
            device,
            dtype,
            eos_ids,
            int(tokenizer.pad_token_id),
            {
                "torch_threads": torch.get_num_threads(),
                "attn_implementation": model.config._attn_implementation,
            },
        )

    def release(self, loaded: LoadedModel) -> None:
        import gc

        import torch

        loaded.model = None
        gc.collect()
        if loaded.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def parameter_count(self, loaded: LoadedModel) -> ParameterCount | None:
        from pytest_llem.engines.flops import non_embedding_parameters

        return ParameterCount(
            non_embedding_parameters(loaded.model),
            source="module",
            confidence="medium",
            notes="counted from the nn.Module's parameters; embedding tables found structurally",
        )

    def counted_flops(
        self, loaded: LoadedModel, prepared: PreparedPrompts, max_new_tokens: int, fixed_length: bool
    ) -> float | None:
        from pytest_llem.engines.flops import count_generate_flops

        return count_generate_flops(
            lambda: [self.generate(loaded, b, max_new_tokens, fixed_length) for b in prepared.batches]
        )

    def prepare(
        self, loaded: LoadedModel, prompts: PromptSet, batch_size: int, max_input_tokens: int
    ) -> PreparedPrompts:
        import torch

        sequences = prompt_token_ids(loaded.tokenizer, prompts, max_input_tokens)
        pad = loaded.pad_token_id if loaded.pad_token_id is not None else loaded.eos_token_ids[0]
        batches = []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(len(seq) for seq in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                if seq:
                    ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                    mask[row, width - len(seq) :] = 1
            batches.append(
                PreparedBatch(ids.to(loaded.device), mask.to(loaded.device), sum(len(seq) for seq in chunk))
            )
        return PreparedPrompts(batches, [len(seq) for seq in sequences])

    def generate(
        self,
        loaded: LoadedModel,
        batch: PreparedBatch,
        max_new_tokens: int,
        fixed_length: bool,
        observer: ProgressObserver | None = None,
    ) -> list[RequestOutput]:
        import torch
        from transformers import StoppingCriteriaList

        with torch.inference_mode():
            self.synchronize(loaded.device)
            clock = _StepClock(
                lambda: self.synchronize(loaded.device),
                max_new_tokens,
                tuple(loaded.eos_token_ids),
                fixed_length,
                observer,
            )
            options: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "do_sample": False,
                "num_beams": 1,
                "pad_token_id": loaded.pad_token_id,
                "stopping_criteria": StoppingCriteriaList([clock]),
            }
            if fixed_length:
                options["min_new_tokens"] = max_new_tokens
            start = clock.start
            output = loaded.model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, **options
            )
            self.synchronize(loaded.device)
            end = time.perf_counter()
        new_tokens = output[:, batch.input_ids.shape[1] :]
        counts = count_output_tokens(new_tokens, loaded.eos_token_ids)
        steps = [t - start for t in clock.step_times] or [end - start]
        prompt_lengths = [int(n) for n in batch.attention_mask.sum(dim=1).tolist()]
        outputs = []
        for count, prompt_tokens in zip(counts, prompt_lengths, strict=True):
            times = tuple(steps[:count]) if len(steps) >= count else None
            outputs.append(
                RequestOutput(
                    output_tokens=count,
                    input_tokens=prompt_tokens,
                    first_token_s=steps[0] if count else None,
                    token_times_s=times,
                    e2e_s=times[-1] if times else end - start,
                    batch_level=True,
                )
            )
        return outputs
