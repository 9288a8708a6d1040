"""Prompts for an experiment: the built-in set, synthetic prompts of an exact token length,
or a user's JSONL/CSV/Parquet file."""

from pytest_llem.datasets.loading import PromptSet, builtin_prompts, load_prompts

__all__ = ["PromptSet", "builtin_prompts", "load_prompts"]
