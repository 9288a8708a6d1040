"""Test-suite setup: hermetic caches, no hub access, and a short idle baseline."""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Iterator
from pathlib import Path

# pytester's in-process runs drop modules first imported inside them; C extensions such as
# torch cannot be imported twice in one process, so the heavy stack is imported up front.
import pyarrow.parquet  # noqa: F401
import pytest
import safetensors.torch  # noqa: F401
import scipy.stats  # noqa: F401
import torch
import transformers  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel  # noqa: F401


def _import_every_module(package: str) -> None:
    """pytest-llem's own modules load lazily (the plugin keeps pytest's start-up cheap), so a
    pytester run in process could be the first to import one; pytester then drops it, and the
    next import makes a second class of the same name (a pydantic record that no longer
    validates its own instances). Importing them all up front makes the suite independent of
    test order (pytest-randomly)."""
    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(module.name)


_import_every_module("pytest_llem")

# Nothing in the suite may reach the Hugging Face hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# Engines run in pytest's process in this suite (users get a process of their own per engine:
# --llem-isolation=process). Why: a host process costs every in-process pytester run about 4 s
# of importing torch again, and `cpu_only_torch` below patches this process only. The engine
# host itself is tested where it is the subject (tests/engines/test_isolation.py), with the
# variable removed so the default is what runs.
os.environ["LLEM_ISOLATION"] = "none"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def llem_test_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built-in models are built once per test session in a private cache directory,
    unless LLEM_CACHE_DIR is set (CI points it at a warm cache)."""
    if os.environ.get("LLEM_CACHE_DIR"):
        yield Path(os.environ["LLEM_CACHE_DIR"])
        return
    cache = tmp_path_factory.mktemp("llem-cache")
    os.environ["LLEM_CACHE_DIR"] = str(cache)
    try:
        yield cache
    finally:
        os.environ.pop("LLEM_CACHE_DIR", None)


@pytest.fixture(autouse=True)
def cpu_only_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite tests the plugin, not a GPU. On a machine with CUDA, `device="auto"` would put
    the tiny model on the GPU with the GPU defaults (30 s idle baseline, 60 s thermal floor
    per experiment), so the in-process suite sees the CPU-only machine CI has. Simulated GPUs
    (pytest_llem.testing) are unaffected; real-GPU checks are benchmarks/test_gpu_meters.py."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(autouse=True)
def no_energy_sensors(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Like CI's VM, the suite's machine has no RAPL: on a bare-metal machine `auto` would
    otherwise pick rapl (or Zeus on RAPL) where tests expect the estimate. Tests that model
    RAPL point LLEM_POWERCAP_ROOT at a simulated tree of their own."""
    monkeypatch.setenv("LLEM_POWERCAP_ROOT", str(tmp_path_factory.getbasetemp() / "no-powercap"))


@pytest.fixture(autouse=True)
def inner_sessions_keep_their_order(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """With pytest-randomly installed the outer suite runs in random order (so no test may
    depend on another), but the pytest sessions a test starts itself (pytester, in process or in
    a subprocess) run their files in order: several check order-dependent output on purpose
    ("experiment k of n", a first test that passes and a second that never runs). pytester
    clears PYTEST_ADDOPTS when it is made, so this is set after."""
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")
        monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")


TINY = {"model": "tiny", "max_new_tokens": 8, "n_prompts": 4, "warmup": 1, "repeats": 2}
