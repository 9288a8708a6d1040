"""The `llem` fixture: what a benchmark test uses to run and measure experiments."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llem.config import ExperimentConfig, build_config
from pytest_llem.engines import LoadedModel
from pytest_llem.errors import ConfigError, PreFlightError
from pytest_llem.experiment import MeasureHandle
from pytest_llem.preflight import PreFlight
from pytest_llem.results import ExperimentResult

if TYPE_CHECKING:
    from pytest_llem.plugin import LlemState

MARKER = "llem"


def marker_settings(item: pytest.Item) -> dict[str, Any]:
    """Keywords of every @pytest.mark.llem on the item, outermost (module) first."""
    merged: dict[str, Any] = {}
    for mark in reversed(list(item.iter_markers(MARKER))):
        if mark.args:
            raise ConfigError(
                f"@pytest.mark.llem takes keyword arguments only, got positional {mark.args!r}; "
                "write e.g. @pytest.mark.llem(model='tiny', batch_size=4)"
            )
        merged.update(mark.kwargs)
    return merged


def model_named(item: pytest.Item, state: LlemState) -> bool:
    return "model" in state.options_layer or "model" in marker_settings(item)


def item_config(
    item: pytest.Item, state: LlemState, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    layers: list[tuple[str, dict[str, Any]]] = [("--llem-* options / ini", state.options_layer)]
    extra = item.config.hook.pytest_llem_config_layers(item=item)
    if extra:
        layers.extend(extra)
    layers.append(("@pytest.mark.llem", marker_settings(item)))
    if overrides:
        layers.append(("llem.run()", overrides))
    return build_config(*layers)


class LlemFixture:
    """Runs experiments for one test. Every result reaches the session report, whatever the
    test asserts afterwards; a failed experiment fails the test with its reason."""

    def __init__(self, item: pytest.Item, state: LlemState) -> None:
        self._item = item
        self._state = state
        self.results: list[ExperimentResult] = []
        self.config = self.settings()
        # Pre-flight at setup, so a failure errors the test instead of failing it. The model is
        # checked only when named explicitly: a test that only uses measure() loads none.
        self.preflight(self.config, check_model=model_named(item, state))

    def settings(self, **overrides: Any) -> ExperimentConfig:
        """The resolved config for this test with `overrides` applied (validated)."""
        try:
            return item_config(self._item, self._state, overrides)
        except ConfigError as exc:
            message = str(exc)
        pytest.fail(message, pytrace=False)  # outside the except: no chained traceback

    def preflight(self, config: ExperimentConfig, check_model: bool = True) -> PreFlight:
        """Pre-flight `config` (cached per session); a failure is recorded and errors the test."""
        try:
            return self._state.session.preflight(config, check_model)
        except PreFlightError as exc:
            message = str(exc)
        failed = ExperimentResult(
            nodeid=self._item.nodeid,
            status="error",
            error=message,
            config=config,
            config_hash=config.config_hash(),
        )
        self._record(failed)
        pytest.fail(message, pytrace=False)

    def _record(self, result: ExperimentResult) -> None:
        self.results.append(result)
        self._item.config.hook.pytest_llem_experiment_result(item=self._item, result=result)

    def run(self, **overrides: Any) -> ExperimentResult:
        """Run one experiment with this test's settings plus `overrides`; return its result."""
        config = self.settings(**overrides)
        self.preflight(config)
        result = self._state.session.run(config, self._item.nodeid)
        self._record(result)
        if result.status != "passed":
            pytest.fail(f"llem experiment {result.status}: {result.error}", pytrace=False)
        self._state.after_result(self._item, result)
        return result

    def load(self, **overrides: Any) -> LoadedModel:
        """The loaded model and tokenizer the experiment would use (cached for the session)."""
        config = self.settings(**overrides)
        preflight = self.preflight(config)
        self._state.session.backend(config.engine).set_threads(config.num_threads)
        return self._state.session.load_model(config, preflight)

    @contextlib.contextmanager
    def measure(self, output_tokens: int, input_tokens: int = 0, **overrides: Any) -> Iterator[MeasureHandle]:
        """Measure your own inference code in the same synchronised energy window as run().

        State how many output tokens the block generates; `handle.result` is set on exit.
        """
        if output_tokens < 1:
            pytest.fail(
                f"llem.measure(output_tokens={output_tokens!r}): must be an integer >= 1", pytrace=False
            )
        config = self.settings(**overrides)
        self.preflight(config, check_model=False)
        with self._state.session.measure(config, self._item.nodeid, output_tokens, input_tokens) as handle:
            yield handle
        assert handle.result is not None
        self._record(handle.result)
        self._state.after_result(self._item, handle.result)
