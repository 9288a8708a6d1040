"""The lifecycle of one experiment, in the order that makes its numbers honest.

`ExperimentSession.run()` is the single owner of that order:
pre-flight -> environment -> idle baseline (context up, model not loaded) -> model load
(cached) -> prompts tokenised -> warmup + thermal floor -> `repeats` x [sync, meter start,
sampler, generate, sync, meter stop] -> metrics, FLOPs, warnings, timeseries.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_llem import nvml_devices
from pytest_llem import warnings as quality
from pytest_llem.baseline import Baseline, BaselineCache, measure_baseline
from pytest_llem.config import EnergyConfig, ExperimentConfig
from pytest_llem.datasets import PromptSet, load_prompts
from pytest_llem.energy import DeviceSet, EnergyMeter, EnergyReading, select_meter
from pytest_llem.engines import GenerationOutput, InferenceBackend, LoadedModel, PreparedBatch, get_backend
from pytest_llem.environment import EnvironmentSnapshot, snapshot
from pytest_llem.errors import ExperimentFailed, PreFlightError
from pytest_llem.flops import count_generate_flops, palm_flops
from pytest_llem.preflight import PreFlight, preflight_key, run_preflight
from pytest_llem.results import (
    EnergyInfo,
    ExperimentResult,
    ExperimentStatus,
    MeasurementWarning,
    RepeatResult,
)
from pytest_llem.sampler import Sample, Sampler, bucket_per_second, throttle_summary, write_timeseries
from pytest_llem.stats import summarise
from pytest_llem.warmup import run_warmup, thermal_floor

GPU_BASELINE_S = 30.0
CPU_BASELINE_S = 2.0


@dataclass
class _Window:
    """What one measurement window produced."""

    reading: EnergyReading
    window_s: float
    generations: list[GenerationOutput]
    samples: list[Sample]
    reference: _Window | None = None  # the reference model's adjacent window, when configured


@dataclass
class _Workload:
    """A loaded model with its prepared batches: the thing a measurement window runs."""

    loaded: LoadedModel
    batches: list[PreparedBatch]


@dataclass
class MeasureHandle:
    """Yielded by `measure()`; `result` is filled in when the block exits."""

    result: ExperimentResult | None = None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "experiment"


class ExperimentSession:
    """Caches shared by the experiments of one session: pre-flight, environment, meters,
    baselines and loaded models. Usable without pytest."""

    def __init__(self, output_dir: Path | None = None, baseline_cache_path: Path | None = None) -> None:
        self.output_dir = output_dir
        self._environment: EnvironmentSnapshot | None = None
        self._preflights: dict[tuple[str, ...], PreFlight | PreFlightError] = {}
        self._meters: dict[tuple[str, str], tuple[EnergyMeter, list[MeasurementWarning]]] = {}
        self._baselines: BaselineCache | None = None
        self._baseline_cache_path = baseline_cache_path
        self._models: dict[tuple[str, ...], LoadedModel] = {}
        self._counter = 0

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
        if duration == 0 or meter.name == "none":
            return None
        if self._baselines is None:
            disk = (
                Path(energy.baseline_cache_path) if energy.baseline_cache_path else self._baseline_cache_path
            )
            self._baselines = BaselineCache(energy.baseline_ttl_s, disk)
        key = BaselineCache.key(meter.name, devices.key)
        cached = self._baselines.get(key)
        if cached is None:
            cached = measure_baseline(meter, duration)
            self._baselines.put(key, cached)
        return cached

    def load_model(self, config: ExperimentConfig, preflight: PreFlight) -> LoadedModel:
        assert preflight.model is not None
        backend = self.backend(config.engine)
        key = (  # the model cache key
            str(preflight.model.path),
            config.dtype,
            preflight.device,
            repr(sorted(config.passthrough_kwargs.items())),
        )
        if key not in self._models:
            self._models[key] = backend.load(
                str(preflight.model.path), config.dtype, preflight.device, dict(config.passthrough_kwargs)
            )
        return self._models[key]

    def close(self) -> None:
        for meter, _ in self._meters.values():
            meter.close()
        self._meters.clear()
        self._models.clear()

    # -- one experiment -------------------------------------------------------------------
    def run(self, config: ExperimentConfig, nodeid: str = "experiment") -> ExperimentResult:
        """Run one experiment. Never raises for the experiment's own failure: the result says."""
        try:
            preflight = self.preflight(config)
        except PreFlightError as exc:
            return self._failed(config, nodeid, "error", str(exc))
        try:
            return self._run(config, nodeid, preflight)
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
        import torch

        self.environment()
        backend, meter, meter_warnings, baseline = self._prepare(config, preflight)
        loaded = self.load_model(config, preflight)
        prompts = load_prompts(
            config.dataset, config.n_prompts, config.seed, loaded.tokenizer, config.prompt_column
        )
        batches = backend.prepare(loaded, prompts, config.batch_size, config.max_input_tokens)
        torch.manual_seed(config.seed)

        def warm_step(index: int) -> float:
            return backend.generate(
                loaded, batches[index % len(batches)], config.max_new_tokens, config.fixed_length
            ).e2e_s

        gpus = self._nvml_devices(preflight.devices)
        warmup = run_warmup(config.warmup, warm_step)
        warmup = thermal_floor(
            warmup,
            config.warmup.thermal_floor_s,
            preflight.devices.uses_gpu,
            lambda: gpus[0].temperature_c() if gpus else None,
        )
        target = _Workload(loaded, batches)
        reference = self._reference_workload(config, preflight, prompts) if config.reference_model else None
        windows = []
        for index in range(config.repeats):
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
        result = self._result(config, nodeid, preflight, windows, baseline, meter_warnings, loaded)
        result = result.model_copy(update={"warmup": warmup})
        if config.count_flops and result.flops is not None:
            counted = count_generate_flops(
                lambda: [
                    backend.generate(loaded, b, config.max_new_tokens, config.fixed_length) for b in batches
                ]
            )
            result.flops.counted_flops = counted
        return result

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
        batches = backend.prepare(loaded, prompts, config.batch_size, config.max_input_tokens)
        run_warmup(
            config.warmup,
            lambda i: (
                backend.generate(
                    loaded, batches[i % len(batches)], config.max_new_tokens, config.fixed_length
                ).e2e_s
            ),
        )
        return _Workload(loaded, batches)

    @staticmethod
    @contextlib.contextmanager
    def _measurement_window(
        backend: InferenceBackend,
        device: str,
        meter: EnergyMeter,
        config: ExperimentConfig,
        gpus: list[nvml_devices.NvmlDevice],
    ) -> Iterator[_Window]:
        """The one place the window's order lives: sync -> meter start -> sampler -> (the
        block) -> sync -> meter stop. The yielded window is filled in when the block exits."""
        sampler = Sampler(gpus if config.energy.sampler else [], config.energy.sample_hz)
        window = _Window(
            EnergyReading(None, EnergyInfo(source="none", measured=False, method="none")), 0.0, [], []
        )
        backend.synchronize(device)
        meter.start()
        sampler.start()
        start = time.perf_counter()
        try:
            yield window
        except BaseException:
            meter.stop()
            sampler.stop()
            raise
        backend.synchronize(device)  # the window closes only after the device is done
        window.window_s = time.perf_counter() - start
        window.reading = meter.stop()
        window.samples = sampler.stop()

    def _window(
        self,
        backend: InferenceBackend,
        workload: _Workload,
        config: ExperimentConfig,
        meter: EnergyMeter,
        gpus: list[nvml_devices.NvmlDevice],
    ) -> _Window:
        loaded = workload.loaded
        with self._measurement_window(backend, loaded.device, meter, config, gpus) as window:
            window.generations = [
                backend.generate(loaded, b, config.max_new_tokens, config.fixed_length)
                for b in workload.batches
            ]
        return window

    # -- metrics ------------------------------------------------------------------------
    def _repeat(self, index: int, window: _Window, baseline: Baseline | None) -> RepeatResult:
        tokens = sum(g.output_tokens for g in window.generations)
        energy = window.reading.energy_j
        adjusted = energy - baseline.power_w * window.window_s if energy is not None and baseline else None
        tpots = [
            g.time_per_output_token_s for g in window.generations if g.time_per_output_token_s is not None
        ]
        reference = window.reference
        reference_energy = reference.reading.energy_j if reference else None
        return RepeatResult(
            index=index,
            window_s=window.window_s,
            output_tokens=tokens,
            input_tokens=sum(g.input_tokens for g in window.generations),
            energy_j=energy,
            per_device_j=window.reading.info.per_device_j,
            tokens_per_second=tokens / window.window_s if window.window_s > 0 else 0.0,
            energy_per_output_token_j=energy / tokens if energy is not None and tokens else None,
            energy_adjusted_j=adjusted,
            prefill_s=sum(g.prefill_s for g in window.generations) / len(window.generations),
            time_per_output_token_s=sum(tpots) / len(tpots) if tpots else None,
            sample_count=len(window.samples),
            reference_window_s=reference.window_s if reference else None,
            reference_energy_j=reference_energy,
            relative_time=window.window_s / reference.window_s if reference else None,
            relative_energy=energy / reference_energy if energy is not None and reference_energy else None,
        )

    def _result(
        self,
        config: ExperimentConfig,
        nodeid: str,
        preflight: PreFlight,
        windows: list[_Window],
        baseline: Baseline | None,
        meter_warnings: list[MeasurementWarning],
        loaded: LoadedModel | None,
    ) -> ExperimentResult:
        """Metrics, statistics and warnings of the measured windows; FLOPs when a model ran."""
        repeats = [self._repeat(i, w, baseline) for i, w in enumerate(windows)]
        total_tokens = sum(r.output_tokens for r in repeats)
        total_window = sum(r.window_s for r in repeats)
        energies = [r.energy_j for r in repeats if r.energy_j is not None]
        has_energy = len(energies) == len(repeats)
        mean_energy = sum(energies) / len(energies) if has_energy else None
        adjusted = [r.energy_adjusted_j for r in repeats if r.energy_adjusted_j is not None]
        mean_adjusted = sum(adjusted) / len(adjusted) if adjusted and len(adjusted) == len(repeats) else None
        info = self._energy_info(windows)
        requested = config.n_prompts * config.max_new_tokens
        samples = [s for w in windows for s in w.samples]

        stats = {"tokens_per_second": summarise([r.tokens_per_second for r in repeats])}
        stats["window_s"] = summarise([r.window_s for r in repeats])
        if has_energy:
            stats["energy_j"] = summarise(energies)
            stats["energy_per_output_token_j"] = summarise(
                [r.energy_per_output_token_j for r in repeats if r.energy_per_output_token_j is not None]
            )

        warnings = list(preflight.warnings) + list(meter_warnings)
        for window in windows:
            warnings.extend(window.reading.warnings)
        if (
            info.source != "none"
            and not info.measured
            and not any(w.flag == "energy_estimated" for w in warnings)
        ):
            warnings.append(quality.energy_estimated(info.source, f"the '{info.source}' meter models energy"))
        candidates = [quality.short_window(total_window / len(repeats))]
        candidates += [quality.output_tokens_mismatch(r.output_tokens, requested) for r in repeats]
        if mean_adjusted is not None:
            candidates.append(quality.negative_adjusted_energy(mean_adjusted))
        candidates.append(quality.high_cv("tokens_per_second", stats["tokens_per_second"].cv))
        if "energy_per_output_token_j" in stats:
            candidates.append(
                quality.high_cv("energy_per_output_token_j", stats["energy_per_output_token_j"].cv)
            )
        throttle = None
        if preflight.devices.uses_gpu and config.energy.sampler:
            per_device_window = [
                len(w.samples) // max(1, len(preflight.devices.gpu_indices)) for w in windows
            ]
            candidates.append(quality.low_sample_count(min(per_device_window)))
            candidates.extend(self._drift_warnings(samples))
            throttle = throttle_summary(samples, 1.0 / config.energy.sample_hz)
            candidates.append(quality.throttling(throttle.kinds, throttle.seconds))
        warnings.extend(w for w in candidates if w is not None)
        warnings = self._dedupe(warnings)

        forward_tokens = sum(g.forward_tokens for g in windows[0].generations)
        flops = palm_flops(loaded.model, forward_tokens, repeats[0].output_tokens) if loaded else None
        self._counter += 1
        timeseries_path = self._write_timeseries(nodeid, samples, windows) if samples else None
        return ExperimentResult(
            nodeid=nodeid,
            status="passed",
            config=config,
            config_hash=config.config_hash(),
            model_source=preflight.model.source if preflight.model else None,
            device=preflight.device,
            output_tokens=repeats[0].output_tokens,
            requested_output_tokens=requested,
            input_tokens=repeats[0].input_tokens,
            window_s=total_window / len(repeats),
            tokens_per_second=total_tokens / total_window if total_window > 0 else 0.0,
            prefill_s=sum(r.prefill_s for r in repeats) / len(repeats),
            time_per_output_token_s=self._mean_optional([r.time_per_output_token_s for r in repeats]),
            energy_j=mean_energy,
            energy_per_output_token_j=sum(energies) / total_tokens if has_energy and total_tokens else None,
            baseline_power_w=baseline.power_w if baseline and has_energy else None,
            energy_adjusted_j=mean_adjusted,
            energy_adjusted_per_output_token_j=sum(adjusted) / total_tokens
            if mean_adjusted is not None and total_tokens
            else None,
            energy=info,
            stats=stats,
            repeats=repeats,
            flops=flops,
            thermal_throttle=throttle,
            timeseries_path=timeseries_path,
            warnings=warnings,
        )

    @staticmethod
    def _mean_optional(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    @staticmethod
    def _energy_info(windows: list[_Window]) -> EnergyInfo:
        last = windows[-1].reading.info
        labels = {label for w in windows for label in w.reading.info.per_device_j}
        per_device = {
            label: sum(w.reading.info.per_device_j.get(label, 0.0) for w in windows) / len(windows)
            for label in labels
        }
        measured = all(w.reading.info.measured for w in windows)
        return last.model_copy(
            update={"per_device_j": dict(sorted(per_device.items())), "measured": measured}
        )

    @staticmethod
    def _drift_warnings(samples: list[Sample]) -> list[MeasurementWarning | None]:
        by_device: dict[int, list[float]] = {}
        for sample in samples:
            if sample.temperature_c is not None:
                by_device.setdefault(sample.gpu_index, []).append(sample.temperature_c)
        return [quality.thermal_drift(t[0], t[-1], f"gpu{i}") for i, t in by_device.items() if t]

    @staticmethod
    def _dedupe(warnings: list[MeasurementWarning]) -> list[MeasurementWarning]:
        seen: set[tuple[str, str]] = set()
        unique = []
        for warning in warnings:
            key = (warning.flag, warning.message)
            if key not in seen:
                seen.add(key)
                unique.append(warning)
        return unique

    def _write_timeseries(self, nodeid: str, samples: list[Sample], windows: list[_Window]) -> str | None:
        if self.output_dir is None:
            return None
        origin = min(s.time_s for s in samples)
        path = self.output_dir / "timeseries" / f"{self._counter:03d}-{_safe_name(nodeid)}.parquet"
        write_timeseries(bucket_per_second(samples, origin), path)
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
        with self._measurement_window(backend, preflight.device, meter, config, gpus) as window:
            yield handle
        window.generations = [
            GenerationOutput([output_tokens], input_tokens, output_tokens, window.window_s, 0.0)
        ]
        measured_config = config.model_copy(
            update={"repeats": 1, "n_prompts": 1, "max_new_tokens": output_tokens}
        )
        result = self._result(measured_config, nodeid, preflight, [window], baseline, meter_warnings, None)
        # the block's own latency structure is unknown: no prefill or per-token figures
        handle.result = result.model_copy(update={"prefill_s": None, "time_per_output_token_s": None})


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
