"""pytest-llem: LLM inference energy experiments as pytest tests.

Everything the pytest plugin does is reachable from plain Python through this API, and so is
what a user annotates (`llem: LlemFixture`) or an extension author implements or receives
(`InferenceBackend`, `GenerationProgress`, `ResolvedModel`, `EnergyInfo`). The names
load on first use (PEP 562), so importing any part of the package (pytest does so at start-up
for the plugin) does not import the measurement core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llem.engines.base import (
        GenerationProgress,
        InferenceBackend,
        LoadedModel,
        RequestOutput,
    )
    from pytest_llem.engines.models import ResolvedModel
    from pytest_llem.measure.progress import Progress
    from pytest_llem.measure.session import ExperimentSession, MeasureHandle, run_experiment
    from pytest_llem.plugin.fixture import LlemFixture
    from pytest_llem.schema.config import EnergyConfig, ExperimentConfig, WarmupConfig, build_config
    from pytest_llem.schema.errors import (
        ConfigError,
        EngineCrashed,
        ExperimentFailed,
        MeterUnavailable,
        ModelUnavailable,
        PreFlightError,
    )
    from pytest_llem.schema.results import (
        EnergyInfo,
        ExperimentResult,
        MeasurementWarning,
        SessionReport,
    )
    from pytest_llem.store.report import read_report

# Where each public name lives; `__all__` and the imports above list the same names (tests/test_public_api.py)
_WHERE = {
    "ConfigError": "pytest_llem.schema.errors",
    "EnergyConfig": "pytest_llem.schema.config",
    "EnergyInfo": "pytest_llem.schema.results",
    "EngineCrashed": "pytest_llem.schema.errors",
    "ExperimentConfig": "pytest_llem.schema.config",
    "ExperimentFailed": "pytest_llem.schema.errors",
    "ExperimentResult": "pytest_llem.schema.results",
    "ExperimentSession": "pytest_llem.measure.session",
    "GenerationProgress": "pytest_llem.engines.base",
    "InferenceBackend": "pytest_llem.engines.base",
    "LlemFixture": "pytest_llem.plugin.fixture",
    "LoadedModel": "pytest_llem.engines.base",
    "MeasureHandle": "pytest_llem.measure.session",
    "MeasurementWarning": "pytest_llem.schema.results",
    "MeterUnavailable": "pytest_llem.schema.errors",
    "ModelUnavailable": "pytest_llem.schema.errors",
    "PreFlightError": "pytest_llem.schema.errors",
    "Progress": "pytest_llem.measure.progress",
    "RequestOutput": "pytest_llem.engines.base",
    "ResolvedModel": "pytest_llem.engines.models",
    "SessionReport": "pytest_llem.schema.results",
    "WarmupConfig": "pytest_llem.schema.config",
    "build_config": "pytest_llem.schema.config",
    "read_report": "pytest_llem.store.report",
    "run_experiment": "pytest_llem.measure.session",
}

__all__ = [
    "ConfigError",
    "EnergyConfig",
    "EnergyInfo",
    "EngineCrashed",
    "ExperimentConfig",
    "ExperimentFailed",
    "ExperimentResult",
    "ExperimentSession",
    "GenerationProgress",
    "InferenceBackend",
    "LlemFixture",
    "LoadedModel",
    "MeasureHandle",
    "MeasurementWarning",
    "MeterUnavailable",
    "ModelUnavailable",
    "PreFlightError",
    "Progress",
    "RequestOutput",
    "ResolvedModel",
    "SessionReport",
    "WarmupConfig",
    "build_config",
    "read_report",
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
