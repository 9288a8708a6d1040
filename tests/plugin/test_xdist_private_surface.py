"""`plugin/scheduling.py` subclasses pytest-xdist's `LoadGroupScheduling` and relies on private
parts of it (there is no public hook for "which work unit a test belongs to", nor for "do not
requeue the test that crashed a worker"). Those parts are pinned here: a pytest-xdist release
that renames or reshapes them fails this test by name, instead of scheduling tests wrongly.
The versions it was written against are the range in pyproject.toml's `test` extra.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from importlib import metadata

import pytest
from xdist.scheduler import LoadGroupScheduling, LoadScopeScheduling

from pytest_llem.plugin.scheduling import ModelGroupScheduling

pytest_plugins = ["pytester"]
WRITTEN_AGAINST = ((3, 5), (4, 0))  # [low, high): pyproject.toml pins pytest-xdist>=3.5,<4


def test_the_installed_pytest_xdist_is_a_version_the_scheduler_was_written_against() -> None:
    version = tuple(int(part) for part in metadata.version("pytest-xdist").split(".")[:2])
    low, high = WRITTEN_AGAINST
    assert low <= version < high, (
        f"pytest-xdist {metadata.version('pytest-xdist')} is outside {low}..{high}: check "
        "plugin/scheduling.py against its LoadScopeScheduling and widen the pin"
    )


def test_the_private_parts_the_scheduler_uses_exist_with_the_shapes_it_assumes(
    pytester: pytest.Pytester,
) -> None:
    assert issubclass(LoadGroupScheduling, LoadScopeScheduling)
    # methods it overrides or calls, with the arguments it passes
    assert list(inspect.signature(LoadScopeScheduling._split_scope).parameters) == ["self", "nodeid"]
    assert list(inspect.signature(LoadScopeScheduling.remove_node).parameters) == ["self", "node"]
    assert list(inspect.signature(LoadScopeScheduling._pending_of).parameters) == ["self", "workload"]
    assert list(inspect.signature(LoadScopeScheduling._reschedule).parameters) == ["self", "node"]
    # the state it reads and writes: per node, per scope, per test id, done or not
    scheduler = ModelGroupScheduling(
        pytester.parseconfig("-p", "xdist", "--tx", "2*popen"), None, pytester.path
    )
    assert isinstance(scheduler.assigned_work, dict) and isinstance(scheduler.workqueue, OrderedDict)
    assert scheduler._pending_of({"scope": {"test_a": False, "test_b": True}}) == 1
