"""Hooks other plugins (and conftest.py files) can implement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_llem.schema.results import ExperimentResult, SessionReport


@pytest.hookspec
def pytest_llem_experiment_result(item: pytest.Item, result: ExperimentResult) -> None:
    """Called on the process that ran `item` with every experiment result it produced,
    passed or failed, before the test's own assertions run."""


@pytest.hookspec
def pytest_llem_report_written(config: pytest.Config, report: SessionReport, path: Path) -> None:
    """Called on the controlling process after the session report has been written."""


@pytest.hookspec(firstresult=True)
def pytest_llem_config_layers(item: pytest.Item) -> list[tuple[str, dict[str, Any]]] | None:
    """Return extra (source, settings) layers applied between the command line and the marker."""
