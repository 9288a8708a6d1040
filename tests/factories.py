"""Builders the test files share: an experiment's record with the fields a test names, its
measurement windows, and the settings that run the simulated engine.

tests/ is not a package; pytest puts this directory (conftest.py's) on sys.path, so a test file
imports these as `from factories import make_result`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pytest_llem.hardware.clock import Clock, SimulatedClock
from pytest_llem.schema.config import ExperimentConfig
from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.results import EnergyInfo, EnergySource, ExperimentResult, RepeatResult, SessionReport
from pytest_llem.store.report import REPORT_NAME, new_report, write_report
from pytest_llem.store.runs import RunStore

T = TypeVar("T")


def simulated_settings(**overrides: object) -> dict[str, Any]:
    """Marker settings that run the simulated engine on simulated GPU 0: two prompts of 4 new
    tokens, two repeats, one warmup step and no thermal floor, NVML energy with no idle baseline.
    Each keyword replaces a whole top-level key (`energy` and `warmup` included) or adds one."""
    settings: dict[str, Any] = {
        "engine": "simulated",
        "model": "sim",
        "device": "cuda:0",
        "n_prompts": 2,
        "max_new_tokens": 4,
        "repeats": 2,
        "warmup": {"n_warmup": 1, "thermal_floor_s": 0},
        "energy": {"meter": "nvml", "baseline_s": 0},
    }
    settings.update(overrides)
    return settings


def energy_info(
    source: EnergySource = "estimate", *, measured: bool = False, method: str = "m"
) -> EnergyInfo:
    """Where a hand-written result's energy came from: by default the CPU-time estimate."""
    return EnergyInfo(source=source, measured=measured, method=method)


def make_repeat(
    index: int,
    *,
    tokens_per_second: float,
    energy_per_output_token_j: float,
    energy_j: float | None = None,
    window_s: float = 1.0,
    output_tokens: int = 100,
    input_tokens: int = 10,
    prefill_s: float = 0.01,
    time_per_output_token_s: float = 0.01,
) -> RepeatResult:
    """One measurement window; its energy is energy per token x output tokens unless given."""
    return RepeatResult(
        index=index,
        window_s=window_s,
        output_tokens=output_tokens,
        input_tokens=input_tokens,
        energy_j=energy_per_output_token_j * output_tokens if energy_j is None else energy_j,
        tokens_per_second=tokens_per_second,
        energy_per_output_token_j=energy_per_output_token_j,
        prefill_s=prefill_s,
        time_per_output_token_s=time_per_output_token_s,
    )


def make_result(
    nodeid: str = "t::a", *, config: ExperimentConfig | None = None, **fields: object
) -> ExperimentResult:
    """A passed experiment of the tiny model (or `config`) with its config's hash; every other
    field of ExperimentResult is its default unless named (`status`, `config_hash`, ... too)."""
    if config is None:
        config = ExperimentConfig(model="tiny")
    values: dict[str, object] = {
        "nodeid": nodeid,
        "status": "passed",
        "config": config,
        "config_hash": config.config_hash(),
    }
    values.update(fields)
    return ExperimentResult.model_validate(values)


def simulated_clock(clock: Clock) -> SimulatedClock:
    """A simulation's clock (`sim.clock`, a simulated powercap tree's `clock`) as the
    SimulatedClock that tests move by hand: what the simulations make unless given another."""
    assert isinstance(clock, SimulatedClock)
    return clock


def known(values: Iterable[T | None]) -> list[T]:
    """The values, each asserted known (not None): for sums and comparisons over records'
    optional figures that a test expects all present."""
    listed = list(values)
    assert all(value is not None for value in listed), listed
    return [value for value in listed if value is not None]


# -- stored runs, for the commands that read a store (llem list, compare, trend) ---------
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def stored_experiment(nodeid: str, scale: float = 1.0) -> ExperimentResult:
    """A stored experiment of three windows; `scale` makes one run costlier than another."""
    repeats = [
        make_repeat(
            i,
            energy_j=10.0 * scale + i * 0.01,
            tokens_per_second=100.0 / scale - i * 0.01,
            energy_per_output_token_j=0.1 * scale + i * 0.0001,
        )
        for i in range(3)
    ]
    return make_result(
        nodeid,
        config=ExperimentConfig(model="tiny", num_threads=1),
        output_tokens=100,
        tokens_per_second=100.0,
        energy_per_output_token_j=0.1 * scale,
        energy=energy_info(),
        repeats=repeats,
    )


def stored_run(root: Path, name: str, *nodeids: str, scale: float = 1.0) -> SessionReport:
    """A completed run named `name` in the store at `root`, of the given tests (one by default)."""
    environment = EnvironmentSnapshot(python="3", platform="linux", tool_version="0", git_commit="c" * 40)
    run_dir = RunStore(root).create_run_dir(environment.git_commit, False, WHEN, name)
    report = new_report(environment, WHEN, "fp", run_dir.name, name)
    report.completed = True
    report.experiments = [stored_experiment(n, scale) for n in nodeids or ("t.py::a",)]
    write_report(report, run_dir / REPORT_NAME)
    return report
