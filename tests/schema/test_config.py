from typing import Any

import pytest

from pytest_llem import ConfigError, ExperimentConfig, build_config


def test_defaults_are_fixed_length_greedy_with_recorded_threads() -> None:
    config = build_config()
    assert config.fixed_length is True
    assert config.num_threads >= 1
    assert config.warmup.n_warmup == 5
    assert config.repeats == 3
    assert config.energy.meter == "auto"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"batch_size": 0}, "batch_size=0 is invalid: Input should be greater than or equal to 1"),
        ({"foo": 1}, "unknown key 'foo' (value 1); allowed keys: model, engine"),
        (
            {"energy": {"bogus": 2}},
            "unknown key 'energy.bogus' (value 2); allowed keys: meter, watts_per_core",
        ),
        ({"energy": "gpu"}, "energy.meter='gpu' is invalid"),
        ({"device": "gpu0"}, "device='gpu0' is invalid: must be one of auto, cpu, cuda, cuda:N"),
        ({"dtype": "fp8"}, "dtype='fp8' is invalid"),
        ({"warmup": {"thermal_floor_s": 10}}, "must be 0 (off) or at least 30 s when enabled"),
    ],
)
def test_bad_values_name_field_value_and_what_is_allowed(settings: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(("@pytest.mark.llem", settings))
    message = str(info.value)
    assert message.startswith("llem config from @pytest.mark.llem: ")
    assert expected in message
    assert "\n" not in message


def test_layers_merge_field_by_field_with_later_layers_winning() -> None:
    config = build_config(
        ("options", {"energy": {"meter": "none"}, "repeats": 5}),
        ("marker", {"energy": {"sample_hz": 5}, "batch_size": 4}),
        ("llem.run()", {"batch_size": 2, "warmup": 0}),
    )
    assert config.energy.meter == "none"
    assert config.energy.sample_hz == 5
    assert config.repeats == 5
    assert config.batch_size == 2
    assert config.warmup.n_warmup == 0


def test_error_names_the_layer_holding_the_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"from llem\.run\(\): repeats=0"):
        build_config(("marker", {"repeats": 2}), ("llem.run()", {"repeats": 0}))


def test_config_hash_is_stable_and_sensitive() -> None:
    first = ExperimentConfig(model="tiny", num_threads=2)
    assert first.config_hash() == ExperimentConfig(model="tiny", num_threads=2).config_hash()
    assert first.config_hash() != ExperimentConfig(model="tiny", num_threads=1).config_hash()
    assert len(first.config_hash()) == 16


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"energy": {"watts_per_core": float("inf")}},
            "energy.watts_per_core=inf is invalid: Input should be a finite number",
        ),
        (
            {"energy": {"sample_hz": float("nan")}},
            "energy.sample_hz=nan is invalid: Input should be a finite number",
        ),
        ({"warmup": {"thermal_floor_s": 1e309}}, "warmup.thermal_floor_s=inf is invalid"),
        (
            {"num_threads": 2**63},
            "num_threads=9223372036854775808 is invalid: Input should be less than or equal to 4096",
        ),
        (
            {"seed": 2**63},
            "seed=9223372036854775808 is invalid: Input should be less than or equal to 9223372036854775807",
        ),
        ({"repeats": 10**30}, "is invalid: Input should be less than or equal to 10000"),
        ({"n_prompts": 10**30}, "is invalid: Input should be less than or equal to 1000000"),
        ({"max_new_tokens": 10**10}, "is invalid: Input should be less than or equal to 1000000000"),
        ({"batch_size": 10**6}, "is invalid: Input should be less than or equal to 100000"),
        (
            {"warmup": 10**6},
            "warmup.n_warmup=1000000 is invalid: Input should be less than or equal to 10000",
        ),
        (
            {"energy": {"baseline_s": 10**6}},
            "energy.baseline_s=1000000 is invalid: Input should be less than or equal to 3600",
        ),
        (
            {"dataset": "synthetic:100000", "n_prompts": 1000},
            "n_prompts=1000 x synthetic length 100000 = 100000000 prompt tokens exceeds the limit of 10000000",
        ),
        ({"dataset": "synthetic:abc"}, "synthetic length must be a positive integer, e.g. 'synthetic:128'"),
        ({"dataset": "prompts.txt"}, "unsupported file type '.txt'; use 'builtin', 'synthetic:N'"),
        ({"model": "a\x00b"}, "model='a\\x00b' is invalid: must not contain a NUL character"),
        ({"model": "\ud800"}, "model='\\ud800' is invalid"),
    ],
)
def test_values_the_report_cannot_hold_are_refused_naming_the_limit(
    settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(("llem.run()", settings))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and len(message) < 400


def test_passthrough_kwargs_must_be_json_and_say_how() -> None:
    import torch

    with pytest.raises(ConfigError) as info:
        build_config(("@pytest.mark.llem", {"passthrough_kwargs": {"torch_dtype": torch.bfloat16}}))
    assert str(info.value) == (
        "llem config from @pytest.mark.llem: passthrough_kwargs={'torch_dtype': torch.bfloat16} is invalid: "
        "passthrough_kwargs['torch_dtype'] is of type torch.dtype, which the JSON report cannot store; "
        "pass the string 'bfloat16' instead"
    )
    problems = [
        ((1, 2), "is of type tuple, which the JSON report cannot store; use a list"),
        ({"x": float("nan")}, r"passthrough_kwargs\['a'\]\['x'\]=nan is not a finite number"),
        ([1, 2**64], r"passthrough_kwargs\['a'\]\[1\]=18446744073709551616 does not fit in int64"),
        ({1: "x"}, "has the non-string key 1; JSON keys are strings, write '1'"),
        (object(), "is of type object, which the JSON report cannot store; pass a JSON value"),
    ]
    for value, hint in problems:
        with pytest.raises(ConfigError, match=hint):
            build_config(("llem.run()", {"passthrough_kwargs": {"a": value}}))
    stored = {
        "torch_dtype": "bfloat16",
        "max_memory": {"0": "10GiB"},
        "revision": None,
        "ids": [1, 2.5, True],
    }
    config = build_config(("llem.run()", {"passthrough_kwargs": stored}))
    assert ExperimentConfig.model_validate_json(config.model_dump_json()) == config


def test_repr_of_a_huge_or_odd_value_stays_one_short_line() -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with pytest.raises(ConfigError) as info:
        build_config(("marker", {"model": "x\n" * 10_000, "seed": Unprintable()}))
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert "<Unprintable object>" in message


def test_preflight_is_not_shared_by_configs_whose_engine_settings_differ() -> None:
    """The engine's settings check reads batch_size, count_flops, reference_model and the
    passthrough kwargs: a pre-flight that passed for one must not be reused for the other."""
    from pytest_llem.measure.preflight import preflight_key

    base = build_config(("test", {"model": "tiny"}))
    variants: list[dict[str, Any]] = [
        {"batch_size": 2},
        {"count_flops": True},
        {"reference_model": "tiny"},
        {"passthrough_kwargs": {"enforce_eager": False}},
    ]
    keys = {preflight_key(base, True)}
    for change in variants:
        keys.add(preflight_key(build_config(("test", {"model": "tiny", **change})), True))
    assert len(keys) == 1 + len(variants)
    assert preflight_key(base, True) == preflight_key(
        build_config(("test", {"model": "tiny", "repeats": 9})), True
    )


def test_the_served_settings_enter_the_hash_only_when_set() -> None:
    """An experiment that uses none of them keeps the hash its stored baselines were saved with
    (the hash of its settings before they existed); setting one changes it."""
    import hashlib
    import json

    from pytest_llem.schema.config import HASHED_WHEN_SET

    config = ExperimentConfig(model="tiny", num_threads=2)
    before = config.model_dump(mode="json", exclude=set(HASHED_WHEN_SET))
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert config.config_hash() == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    for changed in (
        {"concurrency": 2},
        {"request_rate": 4.0},
        {"burstiness": 2.0},
        {"slo": {"ttft_ms": 100}},
    ):
        assert ExperimentConfig(model="tiny", num_threads=2, **changed).config_hash() != config.config_hash()
