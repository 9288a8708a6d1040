"""The `llem` marker and the user property that carries benchmark figures: what the hooks
need to recognise an llem test, without importing the measurement core (pytest start-up and
collection stay cheap; the core loads with the first experiment)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llem.schema.errors import ConfigError

MARKER = "llem"
FIGURE_PROPERTY = "llem_figure"  # user property (JUnit too) carrying a BenchmarkFigure


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


MARKER_HELP = (
    "llem(**settings): experiment settings for this test (model, dtype, batch_size, n_prompts, "
    "max_new_tokens, repeats, energy, ...); validated like llem.run() overrides"
)


def uses_llem(item: pytest.Item) -> bool:
    """The test runs experiments: it takes the `llem` fixture or carries the marker."""
    return "llem" in getattr(item, "fixturenames", ()) or item.get_closest_marker(MARKER) is not None
