"""pytest-llem: LLM inference energy experiments as pytest tests.

Everything the pytest plugin does is reachable from plain Python through this API. The names
load on first use (PEP 562), so importing any part of the package (pytest does so at start-up
for the plugin) does not import the measurement core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llem.measure.session import ExperimentSession, run_experiment
    from pytest_llem.schema.config import EnergyConfig, ExperimentConfig, WarmupConfig, build_config
    from pytest_llem.schema.errors import (
        ConfigError,
        ExperimentFailed,
        MeterUnavailable,
        ModelUnavailable,
        PreFlightError,
    )
    from pytest_llem.schema.results import ExperimentResult, MeasurementWarning, SessionReport

_WHERE = {
    "ConfigError": "pytest_llem.schema.errors",
    "EnergyConfig": "pytest_llem.schema.config",
    "ExperimentConfig": "pytest_llem.schema.config",
    "ExperimentFailed": "pytest_llem.schema.errors",
    "ExperimentResult": "pytest_llem.schema.results",
    "ExperimentSession": "pytest_llem.measure.session",
    "MeasurementWarning": "pytest_llem.schema.results",
    "MeterUnavailable": "pytest_llem.schema.errors",
    "ModelUnavailable": "pytest_llem.schema.errors",
    "PreFlightError": "pytest_llem.schema.errors",
    "SessionReport": "pytest_llem.schema.results",
    "WarmupConfig": "pytest_llem.schema.config",
    "build_config": "pytest_llem.schema.config",
    "run_experiment": "pytest_llem.measure.session",
}

__all__ = [
    "ConfigError",
    "EnergyConfig",
    "ExperimentConfig",
    "ExperimentFailed",
    "ExperimentResult",
    "ExperimentSession",
    "MeasurementWarning",
    "MeterUnavailable",
    "ModelUnavailable",
    "PreFlightError",
    "SessionReport",
    "WarmupConfig",
    "build_config",
    "run_experiment",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_llem' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
