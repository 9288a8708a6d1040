"""The inference-engine protocol: everything the experiment lifecycle asks of an engine.

The lifecycle (`pytest_llem.measure.session`) imports no engine library. It drives an engine only
through `InferenceBackend`, in this order:

1. pre-flight: `settings_problems(config)`, `resolve_device(config.device)`,
   `device_problems(requested, device)`, `gpu_indices(device)`, `resolve_model(reference)`;
2. `set_threads(n)` and `init_device(device)` (the accelerator context exists before the idle
   baseline is measured);
3. `load(spec)` once per `cache_key(spec)` for the session; `release(loaded)` gives the memory
   back (always at session end; before another model loads when the engine is `exclusive`);
4. `prepare(loaded, prompts, batch_size, max_input_tokens)`, outside every window;
5. `seed(seed)`, then warmup: `generate(loaded, batch, ...)` on one prepared batch at a time;
6. each measurement window: `synchronize(device)`, meter start, `generate(...)` for every
   prepared batch in order, `synchronize(device)`, meter stop;
7. metrics from the returned `RequestOutput`s (`pytest_llem.measure.metrics`), FLOPs from
   `parameter_count(loaded)` (`pytest_llem.engines.flops`).

How an engine schedules work is its own business, expressed through how `prepare` groups the
prompts into `PreparedPrompts.batches` - the unit `generate` is called with:
- transformers: one padded batch of `batch_size` prompts per call (static batching);
- vLLM: a single "batch" holding every prompt, so one call submits them all and the engine
  batches them itself (continuous batching);
- llama.cpp: one prompt per call, streamed token by token.
Warmup runs one such unit per step, so an engine whose unit is a whole repeat warms up with
whole repeats.

Adding an engine: a module with a class satisfying `InferenceBackend`, and one line in
`pytest_llem.engines.ENGINES`.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pytest_llem.datasets import PromptSet
from pytest_llem.engines.models import ResolvedModel

if TYPE_CHECKING:
    from pytest_llem.schema.config import ExperimentConfig, ServerConfig


@dataclass(frozen=True)
class LoadSpec:
    """What `load` needs; everything a loaded model depends on is in here.

    `max_context_tokens` (= max_input_tokens + max_new_tokens) lets engines that reserve a
    KV cache up front size it (llama.cpp `n_ctx`, vLLM `max_model_len`); `batch_size` lets an
    engine that fixes its concurrency at load time use it (vLLM `max_num_seqs`). An engine
    whose load does not depend on a field leaves it out of its `cache_key`, so a sweep over
    that field reuses the loaded model.
    """

    engine: str
    model: ResolvedModel
    dtype: str
    device: str
    num_threads: int
    batch_size: int
    max_context_tokens: int
    seed: int
    passthrough_kwargs: dict[str, Any] = field(default_factory=dict)
    server: ServerConfig | None = None  # the served engine's server (a URL or a command to start)
    log_dir: Path | None = None  # where a process the engine starts writes its log (the run's)

    def base_key(self) -> tuple[str, ...]:
        """The fields every engine's model depends on: engine, model path, dtype, device and
        the passthrough kwargs (merged last into the engine's own load call)."""
        return (
            self.engine,
            str(self.model.path),
            self.dtype,
            self.device,
            repr(sorted(self.passthrough_kwargs.items())),
        )


@dataclass
class LoadedModel:
    """A model kept loaded across the experiments of a session that share its cache key.

    `model` and `tokenizer` are the engine's own objects (an `nn.Module` and a transformers
    tokenizer; a `vllm.LLM`; a `llama_cpp.Llama` and an adapter). `tokenizer` must be callable
    like a transformers tokenizer, `tokenizer(text, add_special_tokens=False)["input_ids"]`,
    because synthetic prompts are cut from its token stream. `settings` records what the
    engine fixed at load time that a reader of the result needs (threads, context size,
    weight format, max_num_seqs, ...); it is copied into `ExperimentResult.engine_settings`.
    """

    model: Any
    tokenizer: Any
    device: str
    dtype: str
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedBatch:
    """A tokenised, left-padded batch, already on the model's device (the transformers and
    simulated engines' unit of work)."""

    input_ids: Any
    attention_mask: Any
    input_tokens: int  # real prompt tokens, padding excluded

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class PreparedPrompts:
    """Prompts tokenised outside the window, grouped into the units `generate` takes.

    `batches` holds engine-specific objects (a `PreparedBatch`, a list of token-id lists, ...);
    the lifecycle never looks inside them, it only hands them back to `generate` in order.
    `input_tokens` is the real (unpadded) prompt length of every prompt, in prompt order.
    """

    batches: list[Any]
    input_tokens: list[int]

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class RequestOutput:
    """One prompt's generation, as the engine saw it.

    `output_tokens` is counted from the token ids the engine returned: up to and including the
    first EOS, never padding. Timings are seconds since the request was submitted (the start
    of the `generate` call for engines without their own arrival time), so engines on
    different clocks report comparable numbers:

    - `first_token_s`: when the first output token existed (time to first token);
    - `token_times_s`: when each output token existed, one entry per output token
      (`token_times_s[0] == first_token_s`); None when the engine does not expose them;
    - `e2e_s`: when the request's last output token existed.

    `batch_level` is True when the times are those of the batch the request ran in rather than
    of the request itself (transformers' static batches: every sequence shares the batch's
    prefill and step times; only its finish, at its EOS, is its own).

    A served engine's requests (engines/served) also say how long each waited on the client
    for a concurrency slot before it was sent (`queue_s`, not part of its times), whether it
    failed (`error`: the HTTP status or the connection's failure; its tokens are 0), and where
    its output tokens were counted (`tokens_counted_by`: "server usage" or "tokenizer"). Its
    `token_times_s` are the arrivals of the streamed chunks that carried tokens (one token per
    chunk on vLLM and llama.cpp; a server that merges tokens sends fewer chunks).
    """

    output_tokens: int
    input_tokens: int
    first_token_s: float | None = None
    token_times_s: tuple[float, ...] | None = None
    e2e_s: float | None = None
    batch_level: bool = False
    queue_s: float | None = None
    error: str | None = None
    tokens_counted_by: str | None = None

    @property
    def forward_tokens(self) -> int:
        """Tokens that went through a forward pass: every prompt token and every generated one
        but the last (the last is sampled, never fed back)."""
        return self.input_tokens + max(self.output_tokens - 1, 0)

    @property
    def time_per_output_token_s(self) -> float | None:
        """TPOT = (e2e - ttft) / (output_tokens - 1); None with fewer than two tokens."""
        if self.first_token_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def inter_token_latencies_s(self) -> list[float]:
        """ITL: the gaps between consecutive output tokens (empty without token times)."""
        times = self.token_times_s or ()
        return [later - earlier for earlier, later in itertools.pairwise(times)]


@dataclass(frozen=True)
class GenerationProgress:
    """Where one `generate` call stands right after an engine step (a forward pass whose
    tokens now exist), counted within the call. The lifecycle reads the energy meter at chosen
    steps (measure/phases.py) to split the window into prefill, decode and steady state.

    - `requests`: requests in the call;
    - `first_tokens`: requests that have their first output token;
    - `finished`: requests that have their last output token;
    - `output_tokens`: output tokens generated so far, counted as `RequestOutput` counts them;
    - `at_s`: seconds since the call began; for engines that submit every request at the
      call's start (vLLM, transformers' batch) that is the clock of `RequestOutput`'s token
      times, so a step and a token time compare exactly.
    """

    requests: int
    first_tokens: int
    finished: int
    output_tokens: int
    at_s: float


def steady_state_counts(requests: int, max_num_seqs: int) -> tuple[int, int] | None:
    """ML.ENERGY's steady state of `requests` requests run at most `max_num_seqs` at a time, as
    two counts: it begins once `max_num_seqs` requests have their first token and ends once
    `requests - max_num_seqs - 1` have finished. None when that end count is below 1 (too few
    requests to have one). The one rule for the energy of the steady state (the phase
    recorder, measure/phases.py) and for the served client's read of the server's
    running-requests gauge over it (engines/served/stream.py)."""
    finished = requests - max_num_seqs - 1
    return (max_num_seqs, finished) if finished >= 1 else None


@dataclass(frozen=True)
class LoadPattern:
    """How a served engine sends one pass of prompts (engines/served/arrivals.py defines each
    field): the seeded arrival process, the most requests in flight (None: no limit), and
    the output length asked of every request."""

    request_rate: float | None
    burstiness: float
    concurrency: int | None
    seed: int
    max_new_tokens: int
    fixed_length: bool

    @classmethod
    def of(cls, config: ExperimentConfig) -> LoadPattern:
        return cls(
            config.request_rate,
            config.burstiness,
            config.concurrency,
            config.seed,
            config.max_new_tokens,
            config.fixed_length,
        )


@dataclass(frozen=True)
class ServedCall:
    """What one served `generate` call saw besides its requests: its length, the client's own
    CPU time over it (the client must not be the bottleneck), and the server's `/metrics`
    gauges averaged over the call and over its steady state (None where not scraped, with
    `metrics_note` saying why)."""

    wall_s: float
    client_cpu_s: float
    scrapes: int
    mean_running: float | None
    mean_kv_cache_usage: float | None
    steady_mean_running: float | None
    metrics_note: str | None


def cuda_indices(device: str) -> tuple[int, ...]:
    """The CUDA index a concrete device string names ('cuda:1' -> (1,)); () for 'cpu'. What
    the built-in engines answer for `InferenceBackend.gpu_indices`."""
    return (int(device.split(":")[1]),) if device.startswith("cuda:") else ()


def alive(backend: object, loaded: LoadedModel) -> bool:
    """Whether a cached model can still serve (`backend.alive`: a started server that exited
    cannot); True for an engine that does not say."""
    check = getattr(backend, "alive", None)
    return True if check is None else bool(check(loaded))


def load_concurrency(concurrency: int | None, requests: int) -> int:
    """The most requests a served load has in flight: `concurrency`, or every request when it
    sets no limit."""
    return concurrency or requests


def server_running(calls: Sequence[ServedCall]) -> tuple[float | None, str | None]:
    """The server's mean running requests over served calls, and over what: the steady state
    where every call has one ("steady state"), else the whole load ("window"); (None, None)
    where a call has no gauge reading. The one rule the result and the `batch_full` check read."""
    steady = [c.steady_mean_running for c in calls]
    whole = [c.mean_running for c in calls]
    for values, basis in ((steady, "steady state"), (whole, "window")):
        known = [v for v in values if v is not None]
        if calls and len(known) == len(calls):
            return sum(known) / len(known), basis
    return None, None


def takes_load_pattern(backend: object) -> bool:
    """Whether the engine's `prepare` takes a `load` (`LoadPattern`): the served engine."""
    return bool(getattr(backend, "takes_load_pattern", False))


def prepare_for(
    backend: InferenceBackend, loaded: LoadedModel, prompts: PromptSet, config: ExperimentConfig
) -> PreparedPrompts:
    """`backend.prepare` with what this engine takes: the load pattern for a served engine."""
    if takes_load_pattern(backend):
        prepare: Any = backend.prepare
        result: PreparedPrompts = prepare(
            loaded, prompts, config.batch_size, config.max_input_tokens, load=LoadPattern.of(config)
        )
        return result
    return backend.prepare(loaded, prompts, config.batch_size, config.max_input_tokens)


def in_flight_limit(backend: object, config: ExperimentConfig) -> int | None:
    """The most requests an engine that schedules them runs at once (`max_num_seqs` of the
    steady state): the served engine's `concurrency` (all prompts when unlimited), vLLM's
    `batch_size`; None for an engine that does not schedule requests."""
    if takes_load_pattern(backend):
        return load_concurrency(config.concurrency, config.n_prompts)
    return config.batch_size if schedules_requests(backend) else None


ProgressObserver = Callable[[GenerationProgress], None]
"""Called by an engine after every step of a `generate` call, when it is given one."""


def observes_steps(backend: InferenceBackend) -> bool:
    """Whether the engine's `generate` takes an `observer`. An engine written before it
    existed (a third-party entry point) still runs; its windows are just not split into
    prefill, decode and steady state. A backend that knows better says so itself
    (`observes_steps`: an engine run in another process forwards the real engine's answer)."""
    declared = getattr(backend, "observes_steps", None)
    if isinstance(declared, bool):
        return declared
    try:
        return "observer" in inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):  # a callable without a signature: assume the old protocol
        return False


def schedules_requests(backend: object) -> bool:
    """`InferenceBackend.schedules_requests`, False for an engine that predates it."""
    return bool(getattr(backend, "schedules_requests", False))


@dataclass(frozen=True)
class ParameterCount:
    """Non-embedding parameters of a loaded model, for PaLM FLOPs, and how they were found.

    `source`: "module" (counted from the parameters of an nn.Module, embeddings found
    structurally), "config" (computed from the architecture's shapes in config.json or GGUF
    metadata). `confidence` follows `FlopsResult.confidence`.
    """

    non_embedding: int
    source: str
    confidence: str
    notes: str = ""


class InferenceBackend(Protocol):
    """One inference engine. Instances are stateless: all state lives in `LoadedModel`."""

    name: str
    exclusive: bool
    """True when a loaded model reserves memory another one would need (vLLM pre-allocates its
    KV cache): the session then keeps at most one model of this engine loaded."""
    schedules_requests: bool
    """True when the engine takes every request of a repeat at once and batches them itself,
    up to `batch_size` at a time (vLLM's continuous batching with `max_num_seqs`): such an
    experiment has a steady state (measure/phases.py)."""

    def version(self) -> str | None:
        """The engine library's version (e.g. transformers' or llama-cpp-python's), recorded in
        every result; None when it cannot be read."""

    def settings_problems(self, config: ExperimentConfig) -> list[str]:
        """Pre-flight problems with settings this engine cannot honour (batch_size, dtype,
        passthrough kwargs, ...): one line each naming the field, the value and the fix."""

    def resolve_model(self, reference: str) -> ResolvedModel:
        """Make a model reference loadable by this engine, or raise ModelUnavailable saying
        what to do."""

    def device_problems(self, requested: str, device: str) -> list[str]:
        """Pre-flight problems with the device (empty when it can be used)."""

    def resolve_device(self, device: str) -> str:
        """'auto'/'cuda' -> a concrete device string such as 'cpu' or 'cuda:0'."""

    def gpu_indices(self, device: str) -> tuple[int, ...]:
        """CUDA indices the device string occupies (empty for CPU); they scope GPU meters."""

    def init_device(self, device: str) -> None:
        """Create the accelerator context (before the idle baseline)."""

    def set_threads(self, num_threads: int) -> None:
        """Fix the CPU threads of in-process compute (engines that take threads at load time
        read `LoadSpec.num_threads` instead and may do nothing here)."""

    def seed(self, seed: int) -> None:
        """Seed every random generator the engine uses (generation is greedy; this keeps
        anything else reproducible)."""

    def cache_key(self, spec: LoadSpec) -> tuple[str, ...]:
        """The fields of `spec` the loaded model depends on: equal keys share one load."""

    def load(self, spec: LoadSpec) -> LoadedModel:
        """Load the model (the session caches it by `cache_key`)."""

    def release(self, loaded: LoadedModel) -> None:
        """Free what `load` took (device memory, engine processes); `loaded` is unusable after."""

    def prepare(
        self, loaded: LoadedModel, prompts: PromptSet, batch_size: int, max_input_tokens: int
    ) -> PreparedPrompts:
        """Tokenise (truncating to max_input_tokens) and group the prompts outside the window."""

    def generate(
        self,
        loaded: LoadedModel,
        batch: Any,
        max_new_tokens: int,
        fixed_length: bool,
        observer: ProgressObserver | None = None,
    ) -> list[RequestOutput]:
        """Generate greedily for one prepared unit; one RequestOutput per prompt in it.

        `observer`, when given, is called after every step with the call's progress, on the
        thread that generates, after the step's tokens exist on the host.

        `fixed_length`: every request generates exactly `max_new_tokens` (EOS suppressed);
        otherwise a request stops at its first EOS. The call returns only when the engine's
        work for it is done (the lifecycle synchronises the device after the last call).
        """

    def parameter_count(self, loaded: LoadedModel) -> ParameterCount | None:
        """Non-embedding parameters for PaLM FLOPs; None when the shapes are unknown."""

    def counted_flops(
        self, loaded: LoadedModel, prepared: PreparedPrompts, max_new_tokens: int, fixed_length: bool
    ) -> float | None:
        """FLOPs of one repeat as the engine's own FLOP counter sees them (`count_flops=True`);
        None when the engine has no counter (only transformers, via torch.utils.flop_counter)."""

    def synchronize(self, device: str) -> None:
        """Wait until all queued device work has finished."""


class EngineDefaults:
    """What the built-in engines do alike, written once; each overrides what it does
    differently (and says why there). A third-party engine implements `InferenceBackend`, a
    Protocol, and need not inherit this."""

    exclusive = False
    schedules_requests = False

    def settings_problems(self, config: ExperimentConfig) -> list[str]:
        """No setting it cannot honour."""
        return []

    def gpu_indices(self, device: str) -> tuple[int, ...]:
        return cuda_indices(device)

    def set_threads(self, num_threads: int) -> None:
        """torch's intra-op threads, for engines that compute in this process with torch."""
        import torch

        torch.set_num_threads(num_threads)

    def seed(self, seed: int) -> None:
        """torch's generator: generation is greedy; this keeps anything else reproducible."""
        import torch

        torch.manual_seed(seed)

    def cache_key(self, spec: LoadSpec) -> tuple[str, ...]:
        """Model, dtype, device and engine settings: nothing else is fixed at load time."""
        return spec.base_key()

    def counted_flops(
        self, loaded: LoadedModel, prepared: PreparedPrompts, max_new_tokens: int, fixed_length: bool
    ) -> float | None:
        """No FLOP counter of its own (transformers' is torch's)."""
        return None
