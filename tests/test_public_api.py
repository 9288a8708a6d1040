"""The public API is listed once and agrees with itself: `__all__`, the lazy table (`_WHERE`)
and the type-checking imports name the same things, and every name imports from
`pytest_llem` as what its home module defines."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest_llem

INIT = Path(pytest_llem.__file__)


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(INIT.read_text())
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    return {
        alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


def test_all_the_lazy_table_and_the_type_checking_imports_agree() -> None:
    imports = _type_checking_imports()
    assert sorted(pytest_llem.__all__) == sorted(pytest_llem._WHERE) == sorted(imports)
    assert imports == pytest_llem._WHERE  # each name from the same module in both


def test_every_public_name_imports_as_its_home_modules_object() -> None:
    for name, module in pytest_llem._WHERE.items():
        assert getattr(pytest_llem, name) is getattr(importlib.import_module(module), name), name
    assert set(pytest_llem.__all__) <= set(dir(pytest_llem))


def test_what_users_and_extension_authors_need_is_public() -> None:
    assert {
        "LlemFixture",
        "MeasureHandle",
        "read_report",
        "Progress",
        "GenerationProgress",
        "ResolvedModel",
        "EnergyInfo",
        "InferenceBackend",
        "EngineCrashed",
    } <= set(pytest_llem.__all__)
