"""Inference engines behind one protocol (`engines.base`), registered once.

`ENGINES` (`pytest_llem.schema.registry`) is the only list of engine names: config
validation, pre-flight and the CLI read it. Adding an engine is its module plus one registry
line, or an entry point in the `pytest_llem.engines` group for a third-party package. Entries
name the module lazily, so importing pytest-llem imports no engine library.
"""

from __future__ import annotations

from pytest_llem.engines.base import (
    InferenceBackend,
    LoadedModel,
    LoadSpec,
    ParameterCount,
    PreparedBatch,
    PreparedPrompts,
    RequestOutput,
)
from pytest_llem.engines.tokens import count_output_tokens
from pytest_llem.schema.registry import ENGINES, Entry

__all__ = [
    "ENGINES",
    "Entry",
    "InferenceBackend",
    "LoadSpec",
    "LoadedModel",
    "ParameterCount",
    "PreparedBatch",
    "PreparedPrompts",
    "RequestOutput",
    "count_output_tokens",
    "get_backend",
]


def get_backend(engine: str) -> InferenceBackend:
    """The backend registered as `engine`. `simulated` is the one bound to the active
    pytest_llem.testing simulation (GPU stand-ins for tests)."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not supported; allowed: {', '.join(ENGINES)}")
    backend: InferenceBackend = ENGINES.load(engine)()
    return backend
