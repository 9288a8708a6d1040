"""Inference backends behind one protocol. Today: transformers (PyTorch)."""

from pytest_llem.engines.base import GenerationOutput, InferenceBackend, LoadedModel, PreparedBatch
from pytest_llem.engines.tokens import count_output_tokens

__all__ = ["GenerationOutput", "InferenceBackend", "LoadedModel", "PreparedBatch", "count_output_tokens"]


def get_backend(engine: str) -> InferenceBackend:
    """The backend for `engine`. `simulated` is the one bound to the active
    pytest_llem.testing simulation (GPU stand-ins for tests)."""
    if engine == "transformers":
        from pytest_llem.engines.transformers_backend import TransformersBackend

        return TransformersBackend()
    if engine == "simulated":
        from pytest_llem.testing import active_simulation

        return active_simulation().backend
    raise ValueError(f"engine={engine!r} is not supported; allowed: transformers, simulated")
