"""The transformers backend on the real (tiny) model."""

from pathlib import Path

import pytest
import torch

from pytest_llem import ExperimentSession, GenerationProgress, InferenceBackend, build_config
from pytest_llem.datasets import load_prompts
from pytest_llem.energy import DeviceSet
from pytest_llem.engines import ENGINES, LoadedModel, LoadSpec, get_backend
from pytest_llem.engines.models import ResolvedModel, resolve_model
from pytest_llem.measure.preflight import PreFlight


def _loaded() -> tuple[InferenceBackend, LoadedModel]:
    backend = get_backend("transformers")
    backend.set_threads(1)
    spec = LoadSpec("transformers", resolve_model("tiny"), "float32", "cpu", 1, 1, 64, 0)
    return backend, backend.load(spec)


def test_left_padding_and_exact_input_token_count() -> None:
    backend, loaded = _loaded()
    prompts = load_prompts("builtin", 4, 0, loaded.tokenizer)
    prepared = backend.prepare(loaded, prompts, 4, 256)
    assert len(prepared) == 1
    batch = prepared.batches[0]
    lengths = [len(ids) for ids in loaded.tokenizer(prompts.texts)["input_ids"]]
    assert prepared.input_tokens == lengths
    assert batch.input_tokens == sum(lengths)
    assert int(batch.attention_mask.sum()) == sum(lengths)
    # left padding: every row ends with real tokens
    assert bool(batch.attention_mask[:, -1].all())


def test_fixed_length_generation_counts_every_requested_token_per_request() -> None:
    backend, loaded = _loaded()
    prepared = backend.prepare(loaded, load_prompts("builtin", 3, 0, loaded.tokenizer), 3, 256)
    outputs = backend.generate(loaded, prepared.batches[0], 12, fixed_length=True)
    assert [o.output_tokens for o in outputs] == [12, 12, 12]
    assert [o.input_tokens for o in outputs] == prepared.input_tokens
    for out in outputs:
        assert out.batch_level  # a static batch shares its step times
        assert out.token_times_s is not None and len(out.token_times_s) == 12
        assert out.token_times_s == tuple(sorted(out.token_times_s))
        assert out.first_token_s is not None and out.e2e_s is not None
        assert 0 < out.first_token_s == out.token_times_s[0] < out.e2e_s == out.token_times_s[-1]
        assert out.time_per_output_token_s is not None and out.time_per_output_token_s > 0
        assert len(out.inter_token_latencies_s) == 11


def test_an_observer_sees_every_step_with_the_batchs_progress_on_the_token_clock() -> None:
    backend, loaded = _loaded()
    prepared = backend.prepare(loaded, load_prompts("builtin", 2, 0, loaded.tokenizer), 2, 256)
    steps: list[GenerationProgress] = []
    outputs = backend.generate(loaded, prepared.batches[0], 5, True, steps.append)
    assert [(p.requests, p.first_tokens, p.finished, p.output_tokens) for p in steps] == [
        (2, 2, 0, 2),
        (2, 2, 0, 4),
        (2, 2, 0, 6),
        (2, 2, 0, 8),
        (2, 2, 2, 10),
    ]
    assert tuple(p.at_s for p in steps) == outputs[0].token_times_s  # the same clock, exactly


def test_free_length_generation_stops_at_eos_and_counts_through_it() -> None:
    backend, loaded = _loaded()
    batch = backend.prepare(loaded, load_prompts("builtin", 2, 0, loaded.tokenizer), 2, 256).batches[0]
    # Make the token greedy decoding picks first the EOS token: the count must stop there.
    with torch.inference_mode():
        first = (
            loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            .logits[:, -1]
            .argmax(-1)
        )
    loaded.eos_token_ids = (int(first[0]),)
    loaded.model.generation_config.eos_token_id = int(first[0])
    steps: list[GenerationProgress] = []
    outputs = backend.generate(loaded, batch, 10, False, steps.append)
    assert outputs[0].output_tokens == 1
    assert steps[0].finished >= 1  # the first sequence is done at its EOS, as the observer sees
    # a sequence that ends at its EOS finishes then, not when the batch does
    assert outputs[0].e2e_s == outputs[0].first_token_s
    assert outputs[0].time_per_output_token_s is None
    assert sum(o.output_tokens for o in outputs) < 20


def test_parameter_count_comes_from_the_module() -> None:
    backend, loaded = _loaded()
    count = backend.parameter_count(loaded)
    assert count is not None and count.source == "module" and count.non_embedding > 0


def test_every_registered_engine_names_an_importable_module_path() -> None:
    # the registry is the one list of engine names; each entry says how to install it
    for name, entry in ENGINES.items():
        module, _, attribute = entry.factory.partition(":")
        assert module.startswith("pytest_llem.") and attribute, name
        assert entry.install.startswith("pip install"), name


def test_config_validation_reads_the_engine_and_meter_registries() -> None:
    from pytest_llem.energy import METERS
    from pytest_llem.schema.errors import ConfigError

    with pytest.raises(ConfigError, match="engine='nope' is invalid.*registered: " + ", ".join(ENGINES)):
        build_config(("test", {"engine": "nope"}))
    with pytest.raises(
        ConfigError, match="energy.meter='gpu' is invalid.*registered: auto, " + ", ".join(METERS)
    ):
        build_config(("test", {"energy": "gpu"}))
    for name in ENGINES:
        assert build_config(("test", {"engine": name})).engine == name


class _RecordingBackend:
    """Just enough of an engine to watch the session's model cache."""

    name = "transformers"

    def __init__(self, exclusive: bool) -> None:
        self.exclusive = exclusive
        self.events: list[tuple[str, str]] = []

    def cache_key(self, spec: LoadSpec) -> tuple[str, ...]:
        return spec.base_key()

    def load(self, spec: LoadSpec) -> LoadedModel:
        self.events.append(("load", spec.model.reference))
        return LoadedModel(spec.model.reference, None, spec.device, spec.dtype, (0,), 0)

    def release(self, loaded: LoadedModel) -> None:
        self.events.append(("release", loaded.model))


@pytest.mark.parametrize("exclusive", [True, False])
def test_an_exclusive_engine_releases_its_model_before_loading_another(
    exclusive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = ExperimentSession()
    backend = _RecordingBackend(exclusive)
    monkeypatch.setattr(session, "backend", lambda engine, in_process=False: backend)
    config = build_config(("test", {"engine": "transformers"}))
    for name in ("a", "b", "b"):
        session.load_model(config, PreFlight("cpu", DeviceSet(), ResolvedModel(name, Path(name), "local")))
    session.close()
    if exclusive:
        assert backend.events == [("load", "a"), ("release", "a"), ("load", "b"), ("release", "b")]
    else:  # kept for the session, released at its end
        assert backend.events == [("load", "a"), ("load", "b"), ("release", "a"), ("release", "b")]
