"""The lifecycle of one experiment, in the order that makes its numbers honest.

`ExperimentSession._lifecycle` is the single owner of that order:
pre-flight -> idle baseline (context up, model not loaded) -> the workload's
set-up (model load, cached; prompts tokenised) -> warmup + thermal floor -> window calibration
(passes of the work that fill `min_window_s`) -> `repeats` x [sync, meter start, sampler, the
work x passes, sync, meter stop] (A/B: until the head's gate has settled) -> metrics, FLOPs,
warnings, timeseries.
`run()` (an engine generates), `measure(fn)` (the caller's function) and `with measure()` (the
caller's block: one window, no warmup) are three workloads driven through it, so they cannot
drift apart.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

from pytest_llem.energy import DeviceSet, EnergyMeter, EnergyReading, select_meter
from pytest_llem.energy.base import device_poller, mid_window_reader
from pytest_llem.engines import (
    InferenceBackend,
    LoadedModel,
    LoadSpec,
    RequestOutput,
    get_backend,
)
from pytest_llem.engines.base import (
    alive,
    in_flight_limit,
    takes_load_pattern,
)
from pytest_llem.engines.isolated import IsolatedBackend
from pytest_llem.hardware import clock as clocks
from pytest_llem.hardware import nvml_devices
from pytest_llem.hardware.environment import snapshot
from pytest_llem.hardware.gpu_settings import apply_settings
from pytest_llem.hardware.sampler import DevicePoller, bucket_windows
from pytest_llem.measure.baseline import Baseline, BaselineCache, figure_settings, measure_baseline
from pytest_llem.measure.calibration import Calibration, default_minimum_s, from_timed_passes, from_warmup
from pytest_llem.measure.emissions import CarbonIntensity
from pytest_llem.measure.metrics import MeasuredWindow, MetricsContext, repeat_result
from pytest_llem.measure.phases import MeterFacts, PhaseRecorder
from pytest_llem.measure.preflight import PreFlight, preflight_key, run_preflight
from pytest_llem.measure.progress import SILENT, Progress
from pytest_llem.measure.result import experiment_result
from pytest_llem.measure.served import unseen_server
from pytest_llem.measure.turns import SOLO, WindowTurns
from pytest_llem.measure.validity import UPDATE_PERIOD_S, minimum_window_s
from pytest_llem.measure.warmup import run_warmup, thermal_floor
from pytest_llem.measure.workloads import (
    BlockWorkload,
    CallWorkload,
    EngineWorkload,
    OpenWindow,
    Workload,
    drive,
    timed,
)
from pytest_llem.schema.config import EnergyConfig, ExperimentConfig
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.errors import (
    ConfigError,
    EngineCrashed,
    ExperimentFailed,
    MeasurementError,
    PreFlightError,
)
from pytest_llem.schema.registry import ENGINES, ISOLATION_MODES
from pytest_llem.schema.results import (
    EnergyInfo,
    ExperimentResult,
    ExperimentStatus,
    MeasurementWarning,
    WarmupResult,
)
from pytest_llem.store.timeseries import write_timeseries

GPU_BASELINE_S = 30.0
CPU_BASELINE_S = 2.0
ISOLATION_ENV = "LLEM_ISOLATION"  # the default where neither the flag nor the ini key sets it


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


def _warmup_steps(config: ExperimentConfig) -> int:
    """How many warmup steps progress counts towards (the most, for CV-converged warmup)."""
    return config.warmup.max_prompts if config.warmup.convergence else config.warmup.n_warmup


class ExperimentSession:
    """Caches shared by the experiments of one session: pre-flight, environment, meters,
    baselines, engines and loaded models. Usable without pytest.

    `isolation="process"` (the default, unless `LLEM_ISOLATION` says otherwise) runs each engine that allows it in a host process of
    its own (`pytest_llem.engines.isolated`): a segfault, an abort or the OOM killer there is an
    experiment recorded as `error`, and the session goes on. `"none"` runs engines here."""

    def __init__(
        self,
        output_dir: Path | None = None,
        baseline_cache_path: Path | None = None,
        isolation: str | None = None,
    ) -> None:
        isolation = isolation or os.environ.get(ISOLATION_ENV) or "process"
        if isolation not in ISOLATION_MODES:
            raise ConfigError(
                f"isolation={isolation!r} is not one of {', '.join(ISOLATION_MODES)} "
                f"(from --llem-isolation, llem_isolation or {ISOLATION_ENV}); use process or none"
            )
        self.output_dir = output_dir
        self.isolation = isolation
        self._hosts: dict[str, IsolatedBackend] = {}  # by engine, each with its host process
        self._step = "pre-flight"  # where the lifecycle is, for a crash's message
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
    def backend(self, engine: str, in_process: bool = False) -> InferenceBackend:
        """The session's backend for `engine`: in an engine host unless `in_process` (the
        caller's own code uses the engine here: `llem.load()`, `llem.measure`), isolation is
        off, or the engine must share this process (`Entry.isolate`)."""
        isolated = (
            not in_process and self.isolation == "process" and engine in ENGINES and ENGINES[engine].isolate
        )
        if not isolated:  # stateless, and the simulated engine binds to the simulation active now
            return get_backend(engine)
        if engine not in self._hosts:
            log_dir = self.output_dir / "engines" if self.output_dir is not None else None
            self._hosts[engine] = IsolatedBackend(engine, log_dir)
        # an IsolatedBackend reads name/exclusive/schedules_requests from its host, as
        # properties; mypy wants a Protocol's plain attributes settable, hence the cast
        return cast(InferenceBackend, self._hosts[engine])

    def environment(self) -> EnvironmentSnapshot:
        if self._environment is None:
            self._environment = snapshot()
        return self._environment

    def preflight(
        self, config: ExperimentConfig, check_model: bool = True, in_process: bool = False
    ) -> PreFlight:
        key = preflight_key(config, check_model)
        if key not in self._preflights:
            self.progress.update("pre-flight (model lookup or conversion)")
            try:
                backend = self.backend(config.engine, in_process)
                self._preflights[key] = run_preflight(config, backend, check_model)
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
        # "cuda:0" is whichever board CUDA_VISIBLE_DEVICES names first (each xdist worker's slot
        # has its own): the boards belong in the key of a baseline cached on disk
        boards = f"[{os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}]" if devices.uses_gpu else ""
        key = BaselineCache.key(meter.name, devices.key + boards, figure_settings(energy, duration))
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

    def load_model(
        self, config: ExperimentConfig, preflight: PreFlight, in_process: bool = False
    ) -> LoadedModel:
        """The loaded model for `config`, cached by the engine's `cache_key`. An `exclusive`
        engine (one that reserves memory up front, like vLLM) keeps one model: the previous
        one is released before a different one loads. `in_process`: loaded here, for the
        caller's own code (`llem.load()`), cached apart from the engine host's models."""
        assert preflight.model is not None
        backend = self.backend(config.engine, in_process)
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
            server=config.server,
            log_dir=self.output_dir / "servers" if self.output_dir is not None else None,
        )
        key = (("in-process",) if in_process else ()) + backend.cache_key(spec)
        cached = self._models.get(key)
        if cached is not None and isinstance(backend, IsolatedBackend) and not backend.holds(cached):
            del self._models[key]  # it was in a host that crashed since
        elif cached is not None and not alive(backend, cached):
            backend.release(self._models.pop(key))  # a started server that exited since
        if key not in self._models:
            if backend.exclusive:
                for other in [k for k in self._models if k[0] == config.engine]:
                    backend.release(self._models.pop(other))
            self.progress.update(f"loading {config.model} ({config.engine}, {config.dtype})")
            self._models[key] = backend.load(spec)
        return self._models[key]

    def begin_close(self) -> None:
        """Ask each engine host to release its models and exit, without waiting: the hosts'
        shutdown then runs while the caller writes the report. `close` waits for them."""
        for host in self._hosts.values():
            host.begin_close()

    def close(self) -> None:
        """Release every model and meter. An engine host releases its own models as it
        exits; a failed release is a warning, never an error (this runs at session finish)."""
        for meter, _ in self._meters.values():
            meter.close()
        self._meters.clear()
        failures: list[str] = []
        for key, loaded in list(self._models.items()):
            in_process = key[0] == "in-process"
            engine = key[1] if in_process else key[0]
            if not in_process and engine in self._hosts:
                continue  # its host releases it as it exits
            try:
                self.backend(engine, in_process).release(loaded)
            except Exception as exc:
                failures.append(
                    f"releasing the {engine} model {loaded.device} failed: {type(exc).__name__}: {exc}"
                )
        self._models.clear()
        for host in self._hosts.values():
            failures += host.close()
        self._hosts.clear()
        for failure in failures:
            warnings.warn(f"pytest-llem: {failure}", RuntimeWarning, stacklevel=2)

    # -- one experiment: one lifecycle, three workloads --------------------------------------
    def run(self, config: ExperimentConfig, nodeid: str = "experiment") -> ExperimentResult:
        """Run one experiment. Never raises for the experiment's own failure: the result says.
        An engine process that died is `error` with the signal and the step it died in."""
        self._step = "pre-flight"
        try:
            try:
                self.preflight(config)
            except PreFlightError as exc:
                return self._failed(config, nodeid, "error", str(exc))
            workload = EngineWorkload(self, config)
            return drive(self._lifecycle(config, nodeid, workload), workload)
        except PreFlightError as exc:  # found once the prompts were tokenised (context length)
            return self._failed(config, nodeid, "error", str(exc))
        except EngineCrashed as exc:
            return self._failed(config, nodeid, "error", str(exc.with_step(self._step)))
        except Exception as exc:  # the experiment failed; the session goes on
            detail = f"{type(exc).__name__}: {exc}"
            return self._failed(config, nodeid, "failed", detail)

    def measure_calls(
        self,
        config: ExperimentConfig,
        nodeid: str,
        call: Callable[[], object],
        output_tokens: int,
        input_tokens: int = 0,
    ) -> ExperimentResult:
        """The repeatable form of `measure()`: `call()` (the caller's own inference code) run
        as the warmup steps, then once in each of `repeats` windows - the lifecycle, windows,
        statistics and A/B turns of `run()`, so the caller's code can be gated. The caller
        states the output tokens of one call. An exception from `call` propagates unchanged."""
        workload = CallWorkload(call, RequestOutput(output_tokens, input_tokens))
        return drive(self._lifecycle(config, nodeid, workload), workload)

    @contextlib.contextmanager
    def measure(
        self, config: ExperimentConfig, nodeid: str, output_tokens: int, input_tokens: int = 0
    ) -> Iterator[MeasureHandle]:
        """Measure the block in the same synchronised energy window `run()` uses.

        The caller states how many output tokens its code generates; there is one window
        (no repeats) and no warmup: warm up before entering the block.
        """
        handle = MeasureHandle()
        workload = BlockWorkload(RequestOutput(output_tokens, input_tokens))
        lifecycle = self._lifecycle(config, nodeid, workload)
        opened = next(lifecycle)  # up to the open window
        try:
            yield handle  # the caller's block runs in the window
        except BaseException as exc:
            lifecycle.throw(exc)  # the window closes on its error path, then it propagates
            raise
        workload.fill(opened)
        handle.result = drive(lifecycle, workload)  # closes the window, then the metrics

    def _lifecycle(
        self, config: ExperimentConfig, nodeid: str, workload: Workload
    ) -> Generator[OpenWindow, None, ExperimentResult]:
        """The one owner of the order: pre-flight -> idle baseline (context up,
        model not loaded) -> the workload's set-up (model load, prompts) -> warmup + thermal
        floor -> window calibration -> `repeats` windows (or until the turns say stop) ->
        metrics. It yields each open window; whoever drives it does the window's work before
        resuming it (`drive` asks the workload; `measure()` runs the caller's block), and gets
        the result when it stops."""
        own_code = not workload.needs_model  # the caller's code runs here, with its engine here
        preflight = self.preflight(config, check_model=workload.needs_model, in_process=own_code)
        # the environment snapshot is not taken here: whoever stores the result takes it (once
        # per session, after the first experiment, its GPU settings restored), so its work
        # (package list, git, llama.cpp's build features) does not compete with the model load
        backend = self.backend(config.engine, in_process=own_code)
        self._step = "device set-up"
        backend.set_threads(config.num_threads)
        backend.init_device(preflight.device)
        meter, meter_warnings = self.meter(config.energy, preflight.devices)
        meter, meter_warnings = unseen_server(backend, config, meter, meter_warnings)
        baseline = self.baseline(meter, config.energy, preflight.devices)
        self._step = "model load"
        workload.set_up(preflight)
        gpus = self._nvml_devices(preflight.devices)
        # power limit and locked clocks: after the idle baseline, before warmup; put back on
        # every way out (the end, a failure, an exception thrown in, Ctrl-C, SIGTERM)
        applied = apply_settings(gpus, config.power_limit_w, config.gpu_clocks_mhz)
        try:
            with applied.terminate_as_interrupt():
                return (
                    yield from self._measured(
                        config, nodeid, workload, preflight, backend, meter, meter_warnings, baseline, gpus
                    )
                )
        finally:
            applied.restore()

    def _measured(
        self,
        config: ExperimentConfig,
        nodeid: str,
        workload: Workload,
        preflight: PreFlight,
        backend: InferenceBackend,
        meter: EnergyMeter,
        meter_warnings: list[MeasurementWarning],
        baseline: Baseline | None,
        gpus: list[nvml_devices.NvmlDevice],
    ) -> Generator[OpenWindow, None, ExperimentResult]:
        """The lifecycle from warmup to the result, with the experiment's GPU settings on."""
        warmup = self._warm_up(config, workload, preflight, gpus) if workload.warms_up else None
        self._step = "the reference model's load and warmup"
        workload.after_warmup()
        self._step = "window calibration"
        calibration = self._calibrate(config, preflight.devices.uses_gpu, workload, warmup)
        reader = mid_window_reader(meter)
        facts = MeterFacts(
            meter.name,
            reader is not None,
            minimum_window_s(meter.name, config.energy.min_valid_window_s),
            UPDATE_PERIOD_S.get(meter.name),
        )
        max_num_seqs = in_flight_limit(backend, config)
        taken = yield from self._windows(
            config, workload, preflight, backend, meter, baseline, gpus, calibration, max_num_seqs
        )
        self._step = "metrics"
        loaded = workload.loaded
        parameters = backend.parameter_count(loaded) if loaded else None
        engine, engine_version = workload.identity(backend)
        context = MetricsContext(
            nodeid=nodeid,
            device=preflight.device,
            model_source=preflight.model.source if preflight.model else None,
            engine_version=engine_version,
            engine_settings=dict(loaded.settings) if loaded else {},
            baseline_power_w=baseline.power_w if baseline else None,
            warnings=[*preflight.warnings, *meter_warnings],
            gpu_count=len(preflight.devices.gpu_indices),
            meter=facts,
            max_num_seqs=max_num_seqs,
            parameters=parameters,
            window_passes=taken.passes,
            power_limits_w={gpu.cuda_index: gpu.power_limit_w() for gpu in gpus},
            gpu_indices=preflight.devices.gpu_indices,
            served_concurrency=max_num_seqs if takes_load_pattern(backend) else None,
            served_settings=loaded.settings if takes_load_pattern(backend) and loaded else None,
            engine=engine,
            warmup=warmup,
            baseline_skipped_reason=self.baseline_skipped_reason(meter, config.energy),
            window_calibration=taken.calibration,
            timeseries_path=self._write_timeseries(nodeid, taken.windows),
            counted_flops=workload.counted_flops() if parameters is not None else None,
            carbon=self.carbon,
        )
        return experiment_result(workload.measured_config(config), taken.windows, context)

    def _warm_up(
        self,
        config: ExperimentConfig,
        workload: Workload,
        preflight: PreFlight,
        gpus: list[nvml_devices.NvmlDevice],
    ) -> WarmupResult:
        """The warmup steps (each a turn: A/B shows its waits), then the thermal floor."""

        def warm_step(index: int) -> float:
            with self.turns.turn("warmup", index):
                self._step = f"warmup step {index + 1}"
                self.progress.update("warmup", index + 1, _warmup_steps(config))
                return timed(lambda: workload.warm(index))

        return thermal_floor(
            run_warmup(config.warmup, warm_step),
            config.warmup.thermal_floor_s,
            preflight.devices.uses_gpu,
            lambda: gpus[0].temperature_c() if gpus else None,
            announce=self._announce_floor,
        )

    def _windows(
        self,
        config: ExperimentConfig,
        workload: Workload,
        preflight: PreFlight,
        backend: InferenceBackend,
        meter: EnergyMeter,
        baseline: Baseline | None,
        gpus: list[nvml_devices.NvmlDevice],
        calibration: Calibration,
        max_num_seqs: int | None,
    ) -> Generator[OpenWindow, None, _Taken]:
        """The measurement windows: `repeats` of them on its own; in A/B mode until the head
        says stop, with the head's pass count. A provisional count's short first window is not
        kept (measure/calibration.py)."""
        windows: list[MeasuredWindow] = []
        passes = calibration.passes
        repeats = config.repeats if workload.repeats else 1
        baseline_power_w = baseline.power_w if baseline else None
        reader = mid_window_reader(meter)
        read_mid_window = reader.read_j if reader is not None else None
        index = 0
        while True:  # A/B: the other side is idle meanwhile, and the head decides when to stop
            with self.turns.turn("measure", index, passes) as grant:
                if not grant.run:
                    break
                passes = grant.passes
                if workload.repeats:
                    self.progress.update("repeat", index + 1, repeats)
                taken: dict[str, MeasuredWindow] = {}
                for role in workload.roles(index):
                    self._step = f"window {index + 1}" + (f" ({role} model)" if role != "target" else "")
                    with self._measurement_window(backend, preflight.device, meter, config, gpus) as window:
                        recorder = PhaseRecorder(read_mid_window, clocks.current(), max_num_seqs)
                        window.calls = recorder.calls
                        yield OpenWindow(role, window, passes, recorder)
                    taken[role] = window
                window = taken["target"]
                if "reference" in taken:
                    window.reference = taken["reference"]
                checked = calibration.checked_by_window(window.window_s) if index == 0 else None
                if checked is not None:  # a cold step's count, short: not kept, taken again
                    calibration, passes = checked, checked.passes
                    continue
                windows.append(window)
                grant.taken = repeat_result(index, window, baseline_power_w)
            index += 1
            if not workload.repeats or not self.turns.another_window(index, repeats):
                break
        recorded = (
            calibration.basis
            if passes == calibration.passes
            else f"{passes} pass(es), the A/B head's count (this side's own: {calibration.passes}, {calibration.basis})"
        )
        return _Taken(windows, passes, recorded)

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

    def _calibrate(
        self, config: ExperimentConfig, uses_gpu: bool, workload: Workload, warmup: WarmupResult | None
    ) -> Calibration:
        """How many passes of the workload make one window last at least `min_window_s`, and
        what that was decided from (recorded as `window_calibration`; measure/calibration.py).
        The calibration turn is taken either way, so A/B sides stay in step."""
        minimum = default_minimum_s(config.min_window_s, uses_gpu)
        if not workload.repeats or minimum <= 0:
            return Calibration(1, "not calibrated (min_window_s = 0, or a single block)")
        index = warmup.iterations if warmup is not None else 0
        with self.turns.turn("calibrate", index):
            # a cold step's count needs its first window to check it: only a session on its own
            # can take that window again
            estimate = from_warmup(warmup, workload.units_per_pass(), minimum, self.turns is SOLO)
            if estimate is not None:
                return estimate
            self.progress.update("calibrating the window length")
            return from_timed_passes(lambda count: timed(partial(workload.passes, count)), minimum)

    def _announce_floor(self, seconds: float) -> None:
        self.progress.update("thermal floor", countdown_s=seconds)

    def _nvml_devices(self, devices: DeviceSet) -> list[nvml_devices.NvmlDevice]:
        if not devices.uses_gpu:
            return []
        session = nvml_devices.open_session()
        return session.devices_for(list(devices.gpu_indices)) if session else []

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

    # -- metrics ------------------------------------------------------------------------
    def _write_timeseries(self, nodeid: str, windows: list[MeasuredWindow]) -> str | None:
        """The windows' device samples as a Parquet timeseries beside the report (its path,
        relative to the run directory), numbered by the experiment's place in the session."""
        self._counter += 1
        samples = [s for w in windows for s in w.samples]
        if self.output_dir is None or not samples:
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


@dataclass(frozen=True)
class _Taken:
    """The kept windows, the pass count they held, and how that count was decided."""

    windows: list[MeasuredWindow]
    passes: int
    calibration: str


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
