"""pytest-llem: LLM inference energy experiments as pytest tests.

Everything the pytest plugin does is reachable from plain Python through this API.
"""

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
