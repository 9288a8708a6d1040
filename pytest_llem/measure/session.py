"""The lifecycle of one experiment, in the order that makes its numbers honest.

`ExperimentSession.run()` is the single owner of that order:
pre-flight -> environment -> idle baseline (context up, model not loaded) -> model load
(cached) -> prompts tokenised -> warmup + thermal floor -> `repeats` x [sync, meter start,
sampler, generate, sync, meter stop] -> metrics, FLOPs, warnings, timeseries.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_llem.datasets import PromptSet, load_prompts
from pytest_llem.energy import DeviceSet, EnergyMeter, EnergyReading, select_meter
from pytest_llem.energy.base import device_poller
from pytest_llem.engines import (
    InferenceBackend,
    LoadedModel,
    LoadSpec,
    PreparedPrompts,
    RequestOutput,
    get_backend,
)
from pytest_llem.hardware import clock as clocks
from pytest_llem.hardware import nvml_devices
from pytest_llem.hardware.environment import snapshot
from pytest_llem.hardware.sampler import DevicePoller, Sample, bucket_windows
from pytest_llem.measure.baseline import Baseline, BaselineCache, figure_settings, measure_baseline
from pytest_llem.measure.emissions import CarbonIntensity, with_emissions
from pytest_llem.measure.metrics import MeasuredWindow, MetricsContext, experiment_result
from pytest_llem.measure.preflight import PreFlight, preflight_key, run_preflight
from pytest_llem.measure.progress import SILENT, Progress
from pytest_llem.measure.turns import SOLO, WindowTurns
from pytest_llem.measure.warmup import run_warmup, thermal_floor
from pytest_llem.schema.config import EnergyConfig, ExperimentConfig
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.errors import ExperimentFailed, MeasurementError, PreFlightError
from pytest_llem.schema.results import (
    EnergyInfo,
    ExperimentResult,
    ExperimentStatus,
    MeasurementWarning,
)
from pytest_llem.store.timeseries import write_timeseries

GPU_BASELINE_S = 30.0
CPU_BASELINE_S = 2.0


@dataclass
class _Workload:
    """A loaded model with its prepared prompts: the thing a measurement window runs."""

    loaded: LoadedModel
    prepared: PreparedPrompts


@dataclass
class MeasureHandle:
    """Yielded by `measure()`; `result` is filled in when the block exits."""

    result: ExperimentResult | None = None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "experiment"


@contextlib.contextmanager
def _measurement_errors(meter: str, action: str) -> Iterator[None]:
    """A meter or poller failure inside a window becomes a `MeasurementError` naming the meter."""
    try:
        yield
    except MeasurementError:
        raise
    except Exception as exc:
        raise MeasurementError(
            f"the {meter!r} meter could not {action}: {type(exc).__name__}: {exc}"
        ) from exc


# What ran in a `llem.measure()` window is the test's own code, not the configured engine: the
# result says so instead of naming an engine and version that may never have run (the
# configured model is kept in `config`: the code may well use it through `llem.load()`).
_OWN_CODE = {"engine": "llem.measure", "engine_version": None}


def _warmup_steps(config: ExperimentConfig) -> int:
    """How many warmup steps progress counts towards (the most, for CV-converged warmup)."""
    return config.warmup.max_prompts if config.warmup.convergence else config.warmup.n_warmup


class ExperimentSession:
    """Caches shared by the experiments of one session: pre-flight, environment, meters,
    baselines and loaded models. Usable without pytest."""

    def __init__(self, output_dir: Path | None = None, baseline_cache_path: Path | None = None) -> None:
        self.output_dir = output_dir
        self._environment: EnvironmentSnapshot | None = None
        self._preflights: dict[tuple[str, ...], PreFlight | PreFlightError] = {}
        self._meters: dict[tuple[str, str], tuple[EnergyMeter, list[MeasurementWarning]]] = {}
        self._baselines: BaselineCache | None = None
        self._adopted_baselines: dict[str, Baseline] = {}  # A/B base: the head's, by key
        self._baseline_cache_path = baseline_cache_path
        self._models: dict[tuple[str, ...], LoadedModel] = {}
        self._counter = 0
        # asked before every warmup step and measurement window; A/B mode interleaves here
        self.turns: WindowTurns = SOLO
        self.progress: Progress = SILENT  # told each stage, for live progress (progress.py)
        self.carbon: CarbonIntensity | None = None  # grid intensity for emissions (emissions.py)

    # -- shared resources -------------------------------------------------------------
    def backend(self, engine: str) -> InferenceBackend:
        return get_backend(engine)

    def environment(self) -> EnvironmentSnapshot:
        if self._environment is None:
            self._environment = snapshot()
        return self._environment

    def preflight(self, config: ExperimentConfig, check_model: bool = True) -> PreFlight:
        key = preflight_key(config, check_model)
        if key not in self._preflights:
            self.progress.update("pre-flight (model lookup or conversion)")
            try:
                self._preflights[key] = run_preflight(config, self.backend(config.engine), check_model)
            except PreFlightError as exc:
                self._preflights[key] = exc
        outcome = self._preflights[key]
        if isinstance(outcome, PreFlightError):
            raise outcome
        return outcome

    def meter(self, energy: EnergyConfig, devices: DeviceSet) -> tuple[EnergyMeter, list[MeasurementWarning]]:
        key = (energy.model_dump_json(), devices.key)
        if key not in self._meters:
            self._meters[key] = select_meter(energy, devices)
        return self._meters[key]

    def baseline(self, meter: EnergyMeter, energy: EnergyConfig, devices: DeviceSet) -> Baseline | None:
        duration = energy.baseline_s
        if duration is None:
            duration = GPU_BASELINE_S if devices.uses_gpu else CPU_BASELINE_S
        if self.baseline_skipped_reason(meter, energy) is not None:
            return None
        if self._baselines is None:
            disk = (
                Path(energy.baseline_cache_path) if energy.baseline_cache_path else self._baseline_cache_path
            )
            self._baselines = BaselineCache(energy.baseline_ttl_s, disk)
        key = BaselineCache.key(meter.name, devices.key, figure_settings(energy, duration))
        cached = self._adopted_baselines.get(key) or self._baselines.get(key)
        if cached is None:
            self.progress.update("idle baseline", countdown_s=duration)
            cached = measure_baseline(meter, duration)
            self._baselines.put(key, cached)
        self.turns.share_baseline(key, cached)
        return cached

    def adopt_baselines(self, baselines: dict[str, Baseline]) -> None:
        """A/B base: use the idle baselines the head measured while this side was blocked,
        rather than measure one while the head may be loading or running a model. A key
        that differs (the pull request changed the energy settings) is measured here."""
        self._adopted_baselines.update(baselines)

    @staticmethod
    def baseline_skipped_reason(meter: EnergyMeter, energy: EnergyConfig) -> str | None:
        """Why no idle baseline is taken: turned off, or meaningless for this meter (the
        estimate meter counts only this process tree, so its "idle" would be the harness)."""
        if energy.baseline_s == 0:
            return "turned off (energy.baseline_s = 0)"
        reason: str | None = getattr(meter, "baseline_skipped_reason", None)
        return reason

    def load_model(self, config: ExperimentConfig, preflight: PreFlight) -> LoadedModel:
        """The loaded model for `config`, cached by the engine's `cache_key`. An `exclusive`
        engine (one that reserves memory up front, like vLLM) keeps one model: the previous
        one is released before a different one loads."""
        assert preflight.model is not None
        backend = self.backend(config.engine)
        spec = LoadSpec(
            engine=config.engine,
            model=preflight.model,
            dtype=config.dtype,
            device=preflight.device,
            num_threads=config.num_threads,
            batch_size=config.batch_size,
            max_context_tokens=config.max_input_tokens + config.max_new_tokens,
            seed=config.seed,
            passthrough_kwargs=dict(config.passthrough_kwargs),
        )
        key = backend.cache_key(spec)
        if key not in self._models:
            if backend.exclusive:
                for other in [k for k in self._models if k[0] == config.engine]:
                    backend.release(self._models.pop(other))
            self.progress.update(f"loading {config.model} ({config.engine}, {config.dtype})")
            self._models[key] = backend.load(spec)
        return self._models[key]

    def close(self) -> None:
        for meter, _ in self._meters.values():
            meter.close()
        self._meters.clear()
        for key, loaded in list(self._models.items()):
            try:
                self.backend(key[0]).release(loaded)
            except Exception as exc:  # closing must not fail the session (pytest_sessionfinish)
                warnings.warn(
                    f"pytest-llem: releasing the {key[0]} model {loaded.device} failed: "
                    f"{type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self._models.clear()

    # -- one experiment -------------------------------------------------------------------
    def run(self, config: ExperimentConfig, nodeid: str = "experiment") -> ExperimentResult:
        """Run one experiment. Never raises for the experiment's own failure: the result says."""
        try:
            preflight = self.preflight(config)
        except PreFlightError as exc:
            return self._failed(config, nodeid, "error", str(exc))
        try:
            return with_emissions(self._run(config, nodeid, preflight), self.carbon)
        except Exception as exc:  # the experiment failed; the session goes on
            detail = f"{type(exc).__name__}: {exc}"
            return self._failed(config, nodeid, "failed", detail)

    def _failed(
        self, config: ExperimentConfig, nodeid: str, status: ExperimentStatus, reason: str
    ) -> ExperimentResult:
        return ExperimentResult(
            nodeid=nodeid,
            status=status,
            error=reason,
            config=config,
            config_hash=config.config_hash(),
            engine=config.engine,
        )

    def _prepare(
        self, config: ExperimentConfig, preflight: PreFlight
    ) -> tuple[InferenceBackend, EnergyMeter, list[MeasurementWarning], Baseline | None]:
        backend = self.backend(config.engine)
        backend.set_threads(config.num_threads)
        backend.init_device(preflight.device)
        meter, meter_warnings = self.meter(config.energy, preflight.devices)
        baseline = self.baseline(meter, config.energy, preflight.devices)
        return backend, meter, meter_warnings, baseline

    def _run(self, config: ExperimentConfig, nodeid: str, preflight: PreFlight) -> ExperimentResult:
        self.environment()
        backend, meter, meter_warnings, baseline = self._prepare(config, preflight)
        loaded = self.load_model(config, preflight)
        prompts = load_prompts(
            config.dataset, config.n_prompts, config.seed, loaded.tokenizer, config.prompt_column
        )
        prepared = backend.prepare(loaded, prompts, config.batch_size, config.max_input_tokens)
        backend.seed(config.seed)

        def warm_step(index: int) -> float:
            with self.turns.turn("warmup", index):  # progress inside: A/B shows its waits
                self.progress.update("warmup", index + 1, _warmup_steps(config))
                return self._timed_generate(backend, loaded, prepared, index, config)

        gpus = self._nvml_devices(preflight.devices)
        warmup = run_warmup(config.warmup, warm_step)
        warmup = thermal_floor(
            warmup,
            config.warmup.thermal_floor_s,
            preflight.devices.uses_gpu,
            lambda: gpus[0].temperature_c() if gpus else None,
            announce=self._announce_floor,
        )
        target = _Workload(loaded, prepared)
        reference = self._reference_workload(config, preflight, prompts) if config.reference_model else None
        windows = []
        for index in range(config.repeats):
            with self.turns.turn("measure", index):  # A/B: the other side is idle meanwhile
                self.progress.update("repeat", index + 1, config.repeats)
                if reference is None:
                    windows.append(self._window(backend, target, config, meter, gpus))
                    continue
                # adjacent windows, alternating which goes first, so drift hits both alike
                if index % 2 == 0:
                    window = self._window(backend, target, config, meter, gpus)
                    window.reference = self._window(backend, reference, config, meter, [])
                else:
                    reference_window = self._window(backend, reference, config, meter, [])
                    window = self._window(backend, target, config, meter, gpus)
                    window.reference = reference_window
                windows.append(window)
        result = self._result(config, nodeid, preflight, windows, baseline, meter_warnings, backend, loaded)
        skipped = self.baseline_skipped_reason(meter, config.energy)
        result = result.model_copy(update={"warmup": warmup, "baseline_skipped_reason": skipped})
        if config.count_flops and result.flops is not None:
            result.flops.counted_flops = backend.counted_flops(
                loaded, prepared, config.max_new_tokens, config.fixed_length
            )
        return result

    def _announce_floor(self, seconds: float) -> None:
        self.progress.update("thermal floor", countdown_s=seconds)

    @staticmethod
    def _timed_generate(
        backend: InferenceBackend,
        loaded: LoadedModel,
        prepared: PreparedPrompts,
        index: int,
        config: ExperimentConfig,
    ) -> float:
        """One warmup step: the engine's unit of work number `index` (cycling), timed."""
        clock = clocks.current()  # simulated under pytest_llem.testing
        start = clock.now()
        backend.generate(
            loaded, prepared.batches[index % len(prepared)], config.max_new_tokens, config.fixed_length
        )
        backend.synchronize(loaded.device)
        return clock.now() - start

    def _nvml_devices(self, devices: DeviceSet) -> list[nvml_devices.NvmlDevice]:
        if not devices.uses_gpu:
            return []
        session = nvml_devices.open_session()
        return session.devices_for(list(devices.gpu_indices)) if session else []

    def _reference_workload(
        self, config: ExperimentConfig, preflight: PreFlight, prompts: PromptSet
    ) -> _Workload:
        """The reference model on the same prompts, device, dtype and batch size, warmed up."""
        assert config.reference_model is not None
        backend = self.backend(config.engine)
        resolved = backend.resolve_model(config.reference_model)
        reference_preflight = PreFlight(preflight.device, preflight.devices, resolved, [])
        loaded = self.load_model(config, reference_preflight)
        prepared = backend.prepare(loaded, prompts, config.batch_size, config.max_input_tokens)
        run_warmup(config.warmup, lambda i: self._timed_generate(backend, loaded, prepared, i, config))
        return _Workload(loaded, prepared)

    @staticmethod
    @contextlib.contextmanager
    def _measurement_window(
        backend: InferenceBackend,
        device: str,
        meter: EnergyMeter,
        config: ExperimentConfig,
        gpus: list[nvml_devices.NvmlDevice],
    ) -> Iterator[MeasuredWindow]:
        """The one place the window's order lives: sync -> meter start (a GPU meter's device
        poller starts with it and also feeds the timeseries; other meters get a poller of their
        own for it) -> (the block) -> sync -> meter stop. `window_s` spans the instants at which
        the meter's window opened and closed, so energy and time cover the same range. Every
        poller stops on every exit path; a failure of the meter or a poller is a
        `MeasurementError`. The yielded window is filled in when the block exits."""
        clock = clocks.current()
        window = MeasuredWindow(
            EnergyReading(None, EnergyInfo(source="none", measured=False, method="none")), 0.0, [], []
        )
        shared = device_poller(meter)
        sampler = None
        if shared is None and gpus and config.energy.sampler:
            sampler = DevicePoller(gpus, config.energy.sample_hz)
        with contextlib.ExitStack() as cleanup:
            backend.synchronize(device)
            start_s = clock.now()
            with _measurement_errors(meter.name, "open its window"):
                meter.start()
            cleanup.callback(meter.close)  # after stop() a no-op; on error paths it stops threads
            if sampler is not None:
                sampler.start()
                cleanup.callback(sampler.close)
            yield window
            backend.synchronize(device)  # the window closes only after the device is done
            with _measurement_errors(meter.name, "close its window"):
                reading = meter.stop()
                end_s = clock.now()
                if sampler is not None:
                    samples = sampler.stop()
                elif shared is not None and config.energy.sampler:
                    samples = list(shared.samples)
                else:
                    samples = []
            if reading.start_s is not None and reading.end_s is not None:
                start_s, end_s = reading.start_s, reading.end_s
            window.window_s = end_s - start_s
            window.start_s, window.end_s = start_s, end_s
            window.reading = reading
            window.samples = samples

    def _window(
        self,
        backend: InferenceBackend,
        workload: _Workload,
        config: ExperimentConfig,
        meter: EnergyMeter,
        gpus: list[nvml_devices.NvmlDevice],
    ) -> MeasuredWindow:
        loaded = workload.loaded
        with self._measurement_window(backend, loaded.device, meter, config, gpus) as window:
            for batch in workload.prepared.batches:
                window.requests.extend(
                    backend.generate(loaded, batch, config.max_new_tokens, config.fixed_length)
                )
        return window

    # -- metrics ------------------------------------------------------------------------
    def _result(
        self,
        config: ExperimentConfig,
        nodeid: str,
        preflight: PreFlight,
        windows: list[MeasuredWindow],
        baseline: Baseline | None,
        meter_warnings: list[MeasurementWarning],
        backend: InferenceBackend,
        loaded: LoadedModel | None,
    ) -> ExperimentResult:
        """Metrics of the measured windows (pure, in `metrics.py`), plus the timeseries file."""
        context = MetricsContext(
            nodeid=nodeid,
            device=preflight.device,
            model_source=preflight.model.source if preflight.model else None,
            engine_version=backend.version(),
            engine_settings=dict(loaded.settings) if loaded else {},
            baseline_power_w=baseline.power_w if baseline else None,
            warnings=[*preflight.warnings, *meter_warnings],
            gpu_count=len(preflight.devices.gpu_indices),
            parameters=backend.parameter_count(loaded) if loaded else None,
        )
        result = experiment_result(config, windows, context)
        self._counter += 1
        samples = [s for w in windows for s in w.samples]
        timeseries_path = self._write_timeseries(nodeid, samples, windows) if samples else None
        return result.model_copy(update={"timeseries_path": timeseries_path})

    def _write_timeseries(
        self, nodeid: str, samples: list[Sample], windows: list[MeasuredWindow]
    ) -> str | None:
        if self.output_dir is None:
            return None
        bounds = [
            (
                w.start_s if w.start_s is not None else min((s.time_s for s in w.samples), default=0.0),
                w.end_s if w.end_s is not None else max((s.time_s for s in w.samples), default=0.0),
                w.samples,
            )
            for w in windows
        ]
        origin = min([s.time_s for s in samples] + [start for start, _, _ in bounds])
        path = self.output_dir / "timeseries" / f"{self._counter:03d}-{_safe_name(nodeid)}.parquet"
        write_timeseries(bucket_windows(bounds, origin), path)
        return str(path.relative_to(self.output_dir))

    # -- the user's own inference code ----------------------------------------------------
    @contextlib.contextmanager
    def measure(
        self, config: ExperimentConfig, nodeid: str, output_tokens: int, input_tokens: int = 0
    ) -> Iterator[MeasureHandle]:
        """Measure the block in the same synchronised energy window `run()` uses.

        The caller states how many output tokens its code generates; there is one window
        (no repeats) and no warmup: warm up before entering the block.
        """
        handle = MeasureHandle()
        preflight = self.preflight(config, check_model=False)
        self.environment()
        backend, meter, meter_warnings, baseline = self._prepare(config, preflight)
        gpus = self._nvml_devices(preflight.devices)
        with (
            self.turns.turn("measure", 0),  # A/B: the other side is idle meanwhile
            self._measurement_window(backend, preflight.device, meter, config, gpus) as window,
        ):
            yield handle
        # the block's own latency structure is unknown: no per-request timings
        window.requests = [RequestOutput(output_tokens, input_tokens)]
        measured_config = config.model_copy(
            update={"repeats": 1, "n_prompts": 1, "max_new_tokens": output_tokens}
        )
        result = self._result(
            measured_config, nodeid, preflight, [window], baseline, meter_warnings, backend, None
        )
        skipped = self.baseline_skipped_reason(meter, config.energy)
        handle.result = with_emissions(
            result.model_copy(update={"baseline_skipped_reason": skipped, **_OWN_CODE}), self.carbon
        )

    def measure_calls(
        self,
        config: ExperimentConfig,
        nodeid: str,
        call: Callable[[], object],
        output_tokens: int,
        input_tokens: int = 0,
    ) -> ExperimentResult:
        """The repeatable form of `measure()`: `call()` (the caller's own inference code) run
        `warmup` times, then once in each of `repeats` windows - the same window, statistics
        and A/B turns as `run()`, so the caller's code can be gated. The caller states the
        output tokens of one call. An exception from `call` propagates unchanged."""
        preflight = self.preflight(config, check_model=False)
        self.environment()
        backend, meter, meter_warnings, baseline = self._prepare(config, preflight)
        gpus = self._nvml_devices(preflight.devices)

        def warm_step(index: int) -> float:
            with self.turns.turn("warmup", index):
                self.progress.update("warmup", index + 1, _warmup_steps(config))
                clock = clocks.current()
                start = clock.now()
                call()
                return clock.now() - start

        warmup = run_warmup(config.warmup, warm_step)
        windows = []
        for index in range(config.repeats):
            with self.turns.turn("measure", index):
                self.progress.update("repeat", index + 1, config.repeats)
                with self._measurement_window(backend, preflight.device, meter, config, gpus) as window:
                    call()
            window.requests = [RequestOutput(output_tokens, input_tokens)]
            windows.append(window)
        measured_config = config.model_copy(update={"n_prompts": 1, "max_new_tokens": output_tokens})
        result = self._result(
            measured_config, nodeid, preflight, windows, baseline, meter_warnings, backend, None
        )
        skipped = self.baseline_skipped_reason(meter, config.energy)
        return with_emissions(
            result.model_copy(update={"warmup": warmup, "baseline_skipped_reason": skipped, **_OWN_CODE}),
            self.carbon,
        )


def run_experiment(
    config: ExperimentConfig, nodeid: str = "experiment", session: ExperimentSession | None = None
) -> ExperimentResult:
    """Plain-Python entry point: run one experiment and return its result, or raise
    `ExperimentFailed` whose message says why."""
    owner = session or ExperimentSession()
    try:
        result = owner.run(config, nodeid)
    finally:
        if session is None:
            owner.close()
    if result.status != "passed":
        raise ExperimentFailed(result.error or "experiment failed")
    return result
