"""The three workloads the one lifecycle drives: `run()` (the configured engine on the
configured prompts), `measure(fn)` (the caller's function, repeatable) and `with measure():`
(the caller's block, one window). The lifecycle (measure/session.py) asks a workload for its
set-up, warmup steps, calibration passes and each window's work, in its own order; `drive`
runs a lifecycle to its result, doing each open window's work."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_llem.datasets import PromptSet, load_prompts
from pytest_llem.engines import InferenceBackend, LoadedModel, PreparedPrompts, RequestOutput
from pytest_llem.engines.base import observes_steps, prepare_for
from pytest_llem.hardware import clock as clocks
from pytest_llem.measure.metrics import MeasuredWindow
from pytest_llem.measure.phases import PhaseRecorder
from pytest_llem.measure.preflight import PreFlight, context_problems
from pytest_llem.measure.warmup import run_warmup
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.errors import PreFlightError
from pytest_llem.schema.results import ExperimentResult

if TYPE_CHECKING:
    from pytest_llem.measure.session import ExperimentSession

# What ran in a `llem.measure()` window is the test's own code, not the configured engine: the
# result says so instead of naming an engine and version that may never have run (the
# configured model is kept in `config`: the code may well use it through `llem.load()`).
_OWN_CODE: tuple[str | None, str | None] = ("llem.measure", None)


def timed(work: Callable[[], object]) -> float:
    """Seconds `work()` took on the current clock (simulated under pytest_llem.testing)."""
    clock = clocks.current()
    start = clock.now()
    work()
    return clock.now() - start


@dataclass
class Prepared:
    """A loaded model with its prepared prompts: the thing an engine window runs."""

    loaded: LoadedModel
    prepared: PreparedPrompts


@dataclass
class OpenWindow:
    """A window the lifecycle has opened; `role` says which workload runs in it."""

    role: str  # "target", or "reference" for the reference model's adjacent window
    window: MeasuredWindow
    passes: int = 1  # passes of the workload the window holds (calibrated)
    recorder: PhaseRecorder | None = None  # the engine's steps, read against the meter


class Workload:
    """What an experiment measures, as the lifecycle asks for it. The defaults describe the
    caller's own code; `EngineWorkload` (`run()`) overrides what an engine adds."""

    needs_model = False  # pre-flight resolves the model
    warms_up = True  # warmup steps and the thermal floor before the windows
    repeats = True  # `config.repeats` windows; False: one window (the block form)
    loaded: LoadedModel | None = None

    def set_up(self, preflight: PreFlight) -> None:
        """After the idle baseline, before warmup (model load, prompts)."""

    def warm(self, index: int) -> None:
        """Warmup step `index` (timed by the lifecycle)."""

    def after_warmup(self) -> None:
        """After the thermal floor, before the first window."""

    def passes(self, count: int) -> None:
        """`count` passes of the window's work, outside any window (for calibration)."""

    def units_per_pass(self) -> int:
        """Warmup steps that make one pass (an engine's prepared batches; one call of the
        caller's code)."""
        return 1

    def roles(self, index: int) -> tuple[str, ...]:
        """The windows of repeat `index`, in the order they are taken."""
        return ("target",)

    def fill(self, opened: OpenWindow) -> None:
        """The work inside an open window; its requests are recorded on the window."""

    def measured_config(self, config: ExperimentConfig) -> ExperimentConfig:
        return config

    def identity(self, backend: InferenceBackend) -> tuple[str | None, str | None]:
        """What ran, where it was not the configured engine (None: it was), and its version."""
        return None, backend.version()

    def counted_flops(self) -> float | None:
        """torch's FLOP counter over one pass, where the experiment asks for it (after the windows)."""
        return None


class EngineWorkload(Workload):
    """`run()`: the configured engine generates the configured prompts."""

    needs_model = True

    def __init__(self, session: ExperimentSession, config: ExperimentConfig) -> None:
        self._session, self._config = session, config
        self._backend = session.backend(config.engine)
        self._observes_steps = observes_steps(self._backend)
        self._prompts: PromptSet | None = None
        self._preflight: PreFlight | None = None
        self._target: Prepared | None = None
        self._reference: Prepared | None = None

    def set_up(self, preflight: PreFlight) -> None:
        config, backend = self._config, self._backend
        self._preflight = preflight
        self.loaded = self._session.load_model(config, preflight)
        self._prompts = load_prompts(
            config.dataset, config.n_prompts, config.seed, self.loaded.tokenizer, config.prompt_column
        )
        prepared = prepare_for(backend, self.loaded, self._prompts, config)
        if preflight.model is not None:  # the prompts' real lengths are known only now
            longest = max(prepared.input_tokens, default=0)
            problems = context_problems(config, preflight.model, longest)
            if problems:
                raise PreFlightError(problems)
        self._target = Prepared(self.loaded, prepared)
        backend.seed(config.seed)

    def _generate_one(self, target: Prepared, index: int) -> None:
        """The engine's unit of work number `index` (cycling), synchronised."""
        batches = target.prepared.batches
        self._backend.generate(
            target.loaded,
            batches[index % len(batches)],
            self._config.max_new_tokens,
            self._config.fixed_length,
        )
        self._backend.synchronize(target.loaded.device)

    def warm(self, index: int) -> None:
        assert self._target is not None
        self._generate_one(self._target, index)

    def after_warmup(self) -> None:
        """The reference model on the same prompts, device, dtype and batch size, warmed up."""
        config = self._config
        if config.reference_model is None:
            return
        assert self._preflight is not None and self._prompts is not None
        resolved = self._backend.resolve_model(config.reference_model)
        preflight = PreFlight(self._preflight.device, self._preflight.devices, resolved, [])
        loaded = self._session.load_model(config, preflight)
        prepared = prepare_for(self._backend, loaded, self._prompts, config)
        reference = Prepared(loaded, prepared)

        run_warmup(config.warmup, lambda index: timed(lambda: self._generate_one(reference, index)))
        self._reference = reference

    def roles(self, index: int) -> tuple[str, ...]:
        if self._config.reference_model is None:
            return ("target",)
        # adjacent windows, alternating which goes first, so drift hits both alike
        return ("target", "reference") if index % 2 == 0 else ("reference", "target")

    def units_per_pass(self) -> int:
        assert self._target is not None
        return len(self._target.prepared.batches)

    def passes(self, count: int) -> None:
        assert self._target is not None
        for _ in range(count):
            self._generate_pass(self._target)
        self._backend.synchronize(self._target.loaded.device)  # timed to the device's end

    def _generate_pass(self, target: Prepared, recorder: PhaseRecorder | None = None) -> list[RequestOutput]:
        """Every prepared batch once: one pass of the window's work (in a window, each call's
        steps go to the recorder)."""
        requests: list[RequestOutput] = []
        config = self._config
        for batch in target.prepared.batches:
            if recorder is None or not self._observes_steps:
                requests.extend(
                    self._backend.generate(target.loaded, batch, config.max_new_tokens, config.fixed_length)
                )
                continue
            recorder.begin_call()
            outputs = self._backend.generate(
                target.loaded, batch, config.max_new_tokens, config.fixed_length, observer=recorder
            )
            recorder.end_call(sum(r.input_tokens for r in outputs))
            requests.extend(outputs)
        return requests

    def fill(self, opened: OpenWindow) -> None:
        target = self._target if opened.role == "target" else self._reference
        assert target is not None
        take_calls = getattr(self._backend, "take_calls", None)
        if take_calls is not None:
            take_calls(target.loaded)  # the warmup's and the calibration's calls are not this window's
        for _ in range(opened.passes):
            opened.window.requests.extend(self._generate_pass(target, opened.recorder))
        if take_calls is not None:
            opened.window.served_calls.extend(take_calls(target.loaded))

    def counted_flops(self) -> float | None:
        config = self._config
        if not config.count_flops or self._target is None:
            return None
        return self._backend.counted_flops(
            self._target.loaded, self._target.prepared, config.max_new_tokens, config.fixed_length
        )


class CallWorkload(Workload):
    """`measure(fn)`: the caller's function, once per warmup step and once per window."""

    def __init__(self, call: Callable[[], object], request: RequestOutput) -> None:
        self._call, self._request = call, request

    def warm(self, index: int) -> None:
        self._call()

    def passes(self, count: int) -> None:
        for _ in range(count):
            self._call()

    def fill(self, opened: OpenWindow) -> None:
        for _ in range(opened.passes):
            self._call()
        opened.window.requests = [self._request] * opened.passes  # the caller states one call's tokens

    def measured_config(self, config: ExperimentConfig) -> ExperimentConfig:
        return config.model_copy(update={"n_prompts": 1, "max_new_tokens": self._request.output_tokens})

    def identity(self, backend: InferenceBackend) -> tuple[str | None, str | None]:
        return _OWN_CODE


class BlockWorkload(CallWorkload):
    """`with measure():` the caller's block, in one window; the caller warms up before it."""

    warms_up = False
    repeats = False

    def __init__(self, request: RequestOutput) -> None:
        super().__init__(lambda: None, request)

    def fill(self, opened: OpenWindow) -> None:  # called after the block ran in the window
        opened.window.requests = [self._request]  # its latency structure is unknown: no timings

    def measured_config(self, config: ExperimentConfig) -> ExperimentConfig:
        return super().measured_config(config).model_copy(update={"repeats": 1})


def drive(lifecycle: Generator[OpenWindow, None, ExperimentResult], workload: Workload) -> ExperimentResult:
    """Run a lifecycle to its result, doing each open window's work. A failure inside a window
    goes into the lifecycle, so the window closes on its error path before it propagates."""
    try:
        opened = next(lifecycle)
        while True:
            try:
                workload.fill(opened)
            except BaseException as exc:
                lifecycle.throw(exc)
                raise
            opened = next(lifecycle)
    except StopIteration as stop:
        result: ExperimentResult = stop.value
        return result
