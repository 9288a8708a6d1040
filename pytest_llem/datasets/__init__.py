"""Prompts for an experiment: the built-in set, synthetic prompts of an exact token length,
or a user's JSONL/CSV/Parquet file."""

from pytest_llem.datasets.loading import PromptSet, builtin_prompts, check_dataset, load_prompts
from pytest_llem.schema.dataset_names import dataset_identity

__all__ = ["PromptSet", "builtin_prompts", "check_dataset", "dataset_identity", "load_prompts"]
