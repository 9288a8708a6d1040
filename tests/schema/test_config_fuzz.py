"""No config input crashes a session: 1,000+ generated configs through `build_config`.

Each generated set of layers either validates into a config that the report can store (JSON
round trip and a Parquet row), or is refused with a one-line `ConfigError`. Derandomized, so
the examples are the same on every run and the test cannot flake.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch
from factories import make_result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_llem.schema.config import EnergyConfig, ExperimentConfig, WarmupConfig, build_config
from pytest_llem.schema.errors import ConfigError
from pytest_llem.schema.limits import MAX_PROMPTS, MAX_REPEATS, MAX_TOKENS
from pytest_llem.schema.results import ExperimentResult
from pytest_llem.store.report import experiment_row

EDGE_INTS = [0, 1, -1, 2, 7, MAX_REPEATS, MAX_REPEATS + 1, MAX_PROMPTS, MAX_TOKENS, MAX_TOKENS + 1]
EDGE_INTS += [2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30]
EDGE_FLOATS = [0.0, -0.0, 0.05, 1.5, 10.0, 29.9, 30.0, 3600.0, 1e309]
EDGE_FLOATS += [float("inf"), float("-inf"), float("nan")]
NAMES = ["builtin", "synthetic:8", "synthetic:0", "synthetic:x", "synthetic:99999999", "p.jsonl", "d/p.csv"]
NAMES += ["x.txt", "tiny", "auto", "cpu", "cuda:1", "gpu", "nvml", "estimate", "none", "float16", "simulated"]
NAMES += ["", "a\x00b", "\ud800", "x" * 5000]

ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers())
floats = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats())
texts = st.one_of(st.sampled_from(NAMES), st.text(max_size=12))
junk = st.sampled_from([torch.bfloat16, (1, 2), {1, 2}, object(), b"bytes", 1j])
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
anything = st.one_of(scalars, junk, st.lists(scalars, max_size=3))

json_leaf = st.one_of(st.none(), st.booleans(), ints, floats, texts, junk)
passthrough = st.dictionaries(
    st.one_of(st.text(max_size=8), st.sampled_from([1, None])),
    st.recursive(
        json_leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.one_of(st.text(max_size=5), ints), inner, max_size=3),
        ),
        max_leaves=6,
    ),
    max_size=3,
)


PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["tiny", "smollm2-135m", "org/model", "./ckpt"]),
    "engine": st.sampled_from(["transformers", "simulated"]),
    "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:12"]),
    "dtype": st.sampled_from(["float32", "float16", "bfloat16"]),
    "dataset": st.sampled_from(["builtin", "synthetic:8", "p.jsonl", "d/p.csv", "d.parquet"]),
    "prompt_column": st.sampled_from([None, "prompt", "text"]),
    "reference_model": st.sampled_from([None, "tiny"]),
    "meter": st.sampled_from(["auto", "nvml", "zeus", "rapl", "codecarbon", "estimate", "none"]),
    "baseline_cache_path": st.sampled_from([None, "cache/baseline.json"]),
    "passthrough_kwargs": st.dictionaries(
        st.text(max_size=8), st.one_of(st.none(), st.text(max_size=8)), max_size=2
    ),
}
EDGES: dict[str, st.SearchStrategy[Any]] = {"passthrough_kwargs": passthrough}
SECTIONS = {"energy": EnergyConfig, "warmup": WarmupConfig}
SHORTHANDS = {"energy": PLAUSIBLE["meter"], "warmup": st.integers(min_value=0, max_value=9)}


def _usual_and_edge(model: type[Any], name: str) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    """A value a user would write for this field, and an edge case for it."""
    annotation = model.model_fields[name].annotation if name in model.model_fields else None
    if name in PLAUSIBLE:
        return PLAUSIBLE[name], EDGES.get(name, texts)
    if annotation is int:
        return st.integers(min_value=1, max_value=64), ints
    if annotation in (float, float | None):
        return st.one_of(st.just(0.0), st.floats(min_value=30, max_value=100)), floats
    return st.booleans(), anything


def _draw_value(data: st.DataObject, model: type[Any], name: str) -> Any:
    """Usually a plausible value, now and then an edge case or anything at all (1 in 8 each)."""
    roll = data.draw(st.integers(min_value=0, max_value=15))
    if roll == 1 or name == "bogus":
        return data.draw(anything)
    if name in SECTIONS and model is ExperimentConfig:
        if roll == 0:
            return data.draw(texts)  # a shorthand that names nothing
        if roll % 2:
            return data.draw(SHORTHANDS[name])
        return _draw_mapping(data, SECTIONS[name], max_keys=4)
    usual, edge = _usual_and_edge(model, name)
    return data.draw(edge if roll == 0 else usual)


def _draw_mapping(data: st.DataObject, model: type[Any], max_keys: int) -> dict[str, Any]:
    """Some of the model's keys (now and then an unknown one), each with a drawn value."""
    keys = data.draw(
        st.lists(st.sampled_from([*model.model_fields, "bogus"]), unique=True, max_size=max_keys)
    )
    return {key: _draw_value(data, model, key) for key in keys}


def _assert_storable(config: ExperimentConfig) -> None:
    back = ExperimentConfig.model_validate_json(config.model_dump_json())
    assert back == config and back.config_hash() == config.config_hash()
    result = make_result("t.py::t", config=config, status="error", error="e")
    assert ExperimentResult.model_validate_json(result.model_dump_json()) == result
    pa.Table.from_pylist([experiment_row(result)])  # the Parquet row's types hold every value


@settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_every_generated_config_is_storable_or_a_one_line_error(data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=1, max_value=3))
    named = [(f"layer {i}", _draw_mapping(data, ExperimentConfig, max_keys=4)) for i in range(count)]
    try:
        config = build_config(*named)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("llem config from layer ")
        assert "\n" not in message
        return
    _assert_storable(config)
