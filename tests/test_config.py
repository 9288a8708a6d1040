import pytest

from pytest_llem import ConfigError, ExperimentConfig, build_config


def test_defaults_are_fixed_length_greedy_with_recorded_threads():
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
        ({"device": "gpu0"}, "device='gpu0' is invalid: Value error, must be one of auto, cpu, cuda, cuda:N"),
        ({"dtype": "fp8"}, "dtype='fp8' is invalid"),
        ({"warmup": {"thermal_floor_s": 10}}, "must be 0 (off) or at least 30 s when enabled"),
    ],
)
def test_bad_values_name_field_value_and_what_is_allowed(settings, expected):
    with pytest.raises(ConfigError) as info:
        build_config(("@pytest.mark.llem", settings))
    message = str(info.value)
    assert message.startswith("llem config from @pytest.mark.llem: ")
    assert expected in message
    assert "\n" not in message


def test_layers_merge_field_by_field_with_later_layers_winning():
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


def test_error_names_the_layer_holding_the_bad_value():
    with pytest.raises(ConfigError, match=r"from llem\.run\(\): repeats=0"):
        build_config(("marker", {"repeats": 2}), ("llem.run()", {"repeats": 0}))


def test_config_hash_is_stable_and_sensitive():
    first = ExperimentConfig(model="tiny", num_threads=2)
    assert first.config_hash() == ExperimentConfig(model="tiny", num_threads=2).config_hash()
    assert first.config_hash() != ExperimentConfig(model="tiny", num_threads=1).config_hash()
    assert len(first.config_hash()) == 16
