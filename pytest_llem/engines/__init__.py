"""Inference backends behind one protocol. Today: transformers (PyTorch)."""

from pytest_llem.engines.base import GenerationOutput, InferenceBackend, LoadedModel, PreparedBatch
from pytest_llem.engines.tokens import count_output_tokens

__all__ = ["GenerationOutput", "InferenceBackend", "LoadedModel", "PreparedBatch", "count_output_tokens"]


def get_backend(engine: str) -> InferenceBackend:
    if engine == "transformers":
        from pytest_llem.engines.transformers_backend import TransformersBackend

        return TransformersBackend()
    raise ValueError(f"engine={engine!r} is not supported; allowed: transformers")
