"""The `llem` fixture: what a benchmark test uses to run and measure experiments."""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import pytest

from pytest_llem.engines import LoadedModel
from pytest_llem.measure.preflight import PreFlight
from pytest_llem.measure.session import MeasureHandle
from pytest_llem.plugin.benchmark_bridge import benchmarking, merge_rounds
from pytest_llem.plugin.ledger import LedgerEntry
from pytest_llem.plugin.markers import FIGURE_PROPERTY, marker_settings
from pytest_llem.plugin.slots import experiment_id, slot_problem, stamp_slot
from pytest_llem.schema.config import ExperimentConfig, build_config, shown
from pytest_llem.schema.dataset_names import dataset_path, is_file_dataset
from pytest_llem.schema.errors import ConfigError, EngineCrashed, PreFlightError
from pytest_llem.schema.limits import MAX_TOKENS
from pytest_llem.schema.results import BenchmarkFigure, ExperimentResult

if TYPE_CHECKING:
    from pytest_llem.plugin.state import LlemState


def model_named(item: pytest.Item, state: LlemState) -> bool:
    return "model" in state.options_layer or "model" in marker_settings(item)


def resolve_dataset(settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A relative file `dataset` made absolute against `base` (the test file's directory), so
    it does not depend on the directory pytest was started from. Names (`builtin`,
    `synthetic:N`) and values of the wrong type pass through for validation to judge."""
    out = dict(settings)
    value = out.get("dataset")
    if isinstance(value, str) and "\x00" not in value and is_file_dataset(value):
        path = dataset_path(value)
        if not path.is_absolute():
            out["dataset"] = str(base / path)
    return out


def item_config(
    item: pytest.Item, state: LlemState, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    base = item.path.parent
    layers: list[tuple[str, Mapping[str, Any]]] = [
        *state.defaults_layers(),
        ("--llem-* options / ini", state.options_layer),
    ]
    extra = item.config.hook.pytest_llem_config_layers(item=item)
    if extra:
        layers.extend((source, resolve_dataset(settings, base)) for source, settings in extra)
    layers.append(("@pytest.mark.llem", resolve_dataset(marker_settings(item), base)))
    if overrides:
        layers.append(("llem.run()", resolve_dataset(overrides, base)))
    return build_config(*layers)


_MEASURE_TOKENS = ("output_tokens", "input_tokens")


def _measure_arguments(
    call: Callable[[], object] | None, positional: tuple[Any, ...], keywords: dict[str, Any]
) -> tuple[int, int, dict[str, Any]]:
    """`llem.measure()`'s token counts, checked, and the config overrides left over. Every
    mistake fails the test with one line naming the argument, the value and the fix, never a
    bare TypeError: output_tokens is required, because energy per output token is the figure
    the window exists to give and only the caller knows how many tokens its code generates."""
    example = (
        "llem.measure(model.generate, output_tokens=256)" if call else "with llem.measure(output_tokens=256):"
    )
    what = "fn generates per call" if call else "the block generates"
    overrides = dict(keywords)
    if call is not None and positional:
        pytest.fail(
            f"llem.measure(fn, {shown(positional[0])}): pass the token count by name, e.g. {example}",
            pytrace=False,
        )
    if len(positional) > len(_MEASURE_TOKENS):
        pytest.fail(
            f"llem.measure{shown(positional)}: at most output_tokens and input_tokens are positional; "
            f"settings go by name, e.g. {example}",
            pytrace=False,
        )
    for name, value in zip(_MEASURE_TOKENS, positional, strict=False):
        if name in overrides:
            pytest.fail(
                f"llem.measure({shown(value)}, {name}={shown(overrides[name])}): {name} given twice - "
                "the first argument is not callable; pass the function itself, e.g. "
                "llem.measure(model.generate, output_tokens=256), or measure a block with "
                "`with llem.measure(output_tokens=256):`",
                pytrace=False,
            )
        overrides[name] = value
    if "output_tokens" not in overrides:
        pytest.fail(
            f"llem.measure(output_tokens=...): required - the number of output tokens {what}, e.g. {example}",
            pytrace=False,
        )
    output_tokens = _token_count(
        "output_tokens", overrides.pop("output_tokens"), 1, f"the output tokens {what}"
    )
    input_tokens = _token_count(
        "input_tokens", overrides.pop("input_tokens", 0), 0, "the prompt tokens, 0 if unknown"
    )
    return output_tokens, input_tokens, overrides


def _token_count(name: str, value: Any, low: int, meaning: str) -> int:
    """`value` as an int from `low` to MAX_TOKENS. Any integer type passes (a NumPy or 0-d
    torch integer too); a bool, float, nan or string is a mistake, not a count."""
    count: int | None = None
    if not isinstance(value, bool):
        try:
            count = operator.index(value)
        except Exception:  # not an integer, or a user's type whose __index__ itself fails
            count = None
    if count is None or not low <= count <= MAX_TOKENS:
        pytest.fail(
            f"llem.measure({name}={shown(value)}): must be an integer from {low} to {MAX_TOKENS} - {meaning}",
            pytrace=False,
        )
    return count


class LlemFixture:
    """Runs experiments for one test. Every result reaches the session report, whatever the
    test asserts afterwards; a failed experiment fails the test with its reason."""

    def __init__(self, item: pytest.Item, state: LlemState) -> None:
        self._item = item
        self._nodeid = experiment_id(item)  # the id results carry, whatever xdist adds
        self._state = state
        self.results: list[ExperimentResult] = []
        self._rounds: dict[str, list[ExperimentResult]] = {}  # benchmark(llem.run) calls by config
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
        message = slot_problem(self._state.slot, config)
        if message is None:
            try:
                # without a model to resolve, nothing needs the engine's own process
                return self._state.session.preflight(config, check_model, in_process=not check_model)
            except PreFlightError as exc:
                message = str(exc)
            except EngineCrashed as exc:
                message = str(exc.with_step("pre-flight"))
        failed = ExperimentResult(
            nodeid=self._nodeid,
            status="error",
            error=message,
            config=config,
            config_hash=config.config_hash(),
        )
        self._record(failed)
        pytest.fail(message, pytrace=False)

    def _begin(self, config: ExperimentConfig) -> LedgerEntry | None:
        """Under xdist, the experiment's start in the workers' ledger (see plugin.ledger)."""
        ledger = self._state.ledger
        return ledger.start(self._nodeid, config) if ledger is not None else None

    def _record(self, result: ExperimentResult, entry: LedgerEntry | None = None) -> ExperimentResult:
        """Keep `result` (under xdist with its slot and concurrency) and hand it to the plugin."""
        if self._state.slot is not None:
            result = stamp_slot(result, self._state.slot, entry)
        self.results.append(result)
        self._item.config.hook.pytest_llem_experiment_result(item=self._item, result=result)
        return result

    def record_figure(
        self,
        name: str,
        value: float,
        *,
        unit: str = "",
        at_least: float | None = None,
        at_most: float | None = None,
        detail: str = "",
    ) -> BenchmarkFigure:
        """Record a benchmark figure (an overhead ratio, a sampler's share of a core) in the
        session report, the terminal summary and JUnit, beside its target. It never fails the
        test: on a noisy machine a timing belongs in the report, not in an assertion."""
        if not math.isfinite(value):
            raise ConfigError(f"llem.record_figure: {name}={value!r} is not a finite number")
        target, met = None, None
        if at_least is not None:
            target, met = f">= {at_least:g}", value >= at_least
        elif at_most is not None:
            target, met = f"<= {at_most:g}", value <= at_most
        figure = BenchmarkFigure(
            nodeid=self._nodeid,
            name=name,
            value=value,
            unit=unit,
            target=target,
            target_met=met,
            detail=detail,
        )
        self._item.user_properties.append((FIGURE_PROPERTY, figure.model_dump_json()))
        return figure

    def run(self, **overrides: Any) -> ExperimentResult:
        """Run one experiment with this test's settings plus `overrides`; return its result.

        Under `benchmark(llem.run)` (pytest-benchmark) each call is one measurement window
        (warmup only on the first call), and the calls become the repeats of one experiment,
        recorded when the test function returns."""
        config = self.settings(**overrides)
        self.preflight(config)
        if benchmarking(self._item):
            return self._benchmark_round(config)
        entry = self._begin(config)
        try:
            result = self._state.session.run(config, self._nodeid)
        finally:
            if entry is not None:
                entry.end()
        result = self._record(result, entry)
        if result.status != "passed":
            pytest.fail(f"llem experiment {result.status}: {result.error}", pytrace=False)
        self._state.after_result(self._item, result)
        return result

    def _benchmark_round(self, config: ExperimentConfig) -> ExperimentResult:
        rounds = self._rounds.setdefault(config.config_hash(), [])
        one_window = config.model_copy(
            update={
                "repeats": 1,
                "warmup": config.warmup.model_copy(update={"n_warmup": 0, "convergence": False})
                if rounds
                else config.warmup,
            }
        )
        result = self._state.session.run(one_window, self._nodeid)
        if result.status != "passed":
            self._record(result)
            pytest.fail(f"llem experiment {result.status}: {result.error}", pytrace=False)
        round_result = result.model_copy()  # recorded with the round's own config
        round_result.config = config
        rounds.append(round_result)
        return result

    def flush_benchmark_rounds(self) -> None:
        """Record the calls made under pytest-benchmark as one experiment per config."""
        groups, self._rounds = list(self._rounds.values()), {}
        for rounds in groups:
            merged = merge_rounds(rounds)
            self._record(merged)
            self._state.after_result(self._item, merged)

    def load(self, **overrides: Any) -> LoadedModel:
        """The loaded model and tokenizer the experiment would use (cached for the session)."""
        config = self.settings(**overrides)
        preflight = self.preflight(config)
        self._state.session.backend(config.engine, in_process=True).set_threads(config.num_threads)
        return self._state.session.load_model(config, preflight, in_process=True)

    @overload
    def measure(
        self, output_tokens: int, input_tokens: int = 0, **overrides: Any
    ) -> contextlib.AbstractContextManager[MeasureHandle]: ...

    @overload
    def measure(
        self, call: Callable[[], object], *, output_tokens: int, input_tokens: int = 0, **overrides: Any
    ) -> ExperimentResult: ...

    def measure(self, *args: Any, **kwargs: Any) -> Any:
        """Measure your own inference code in the same synchronised energy window as run().

        `with llem.measure(output_tokens=N) as handle:` measures the block once (one window,
        no warmup); `handle.result` is set on exit. `llem.measure(generate, output_tokens=N)`
        calls `generate()` `warmup` times and then once in each of `repeats` windows - one
        experiment with statistics across repeats, gated like `run()` (A/B included). State
        how many output tokens the block (or one call) generates.
        """
        call = args[0] if args and callable(args[0]) else None
        output_tokens, input_tokens, overrides = _measure_arguments(call, args[1:] if call else args, kwargs)
        if call is not None:
            return self._measure_calls(call, output_tokens, input_tokens, overrides)
        return self._measure_block(output_tokens, input_tokens, overrides)

    def _measure_calls(
        self, call: Callable[[], object], output_tokens: int, input_tokens: int, overrides: dict[str, Any]
    ) -> ExperimentResult:
        config = self.settings(**overrides)
        self.preflight(config, check_model=False)
        entry = self._begin(config)
        try:
            result = self._state.session.measure_calls(
                config, self._nodeid, call, output_tokens, input_tokens
            )
        finally:
            if entry is not None:
                entry.end()
        result = self._record(result, entry)
        self._state.after_result(self._item, result)
        return result

    @contextlib.contextmanager
    def _measure_block(
        self, output_tokens: int, input_tokens: int, overrides: dict[str, Any]
    ) -> Iterator[MeasureHandle]:
        config = self.settings(**overrides)
        self.preflight(config, check_model=False)
        entry = self._begin(config)
        try:
            with self._state.session.measure(config, self._nodeid, output_tokens, input_tokens) as handle:
                yield handle
        finally:
            if entry is not None:
                entry.end()
        assert handle.result is not None
        handle.result = self._record(handle.result, entry)
        self._state.after_result(self._item, handle.result)
