"""The one registry style: lazy `module:attribute` entries read by validation, plus
entry-point groups through which another package adds a meter or an engine without editing
pytest-llem. The test installs a real distribution with pip and runs its meter in pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_llem.schema.registry import ENGINES, METERS, Entry, Registry

WALLPLUG = '''
"""A third-party meter: a wall-plug power reading integrated over the window (here a fixed
100 W, as a plug that reports a constant would)."""
from pytest_llem.energy.base import EnergyReading
from pytest_llem.hardware import clock
from pytest_llem.schema.results import EnergyInfo


class WallPlug:
    name = "wallplug"
    measured = False
    baseline_skipped_reason = "a constant reading has no idle state"

    def __init__(self):
        self._start = None

    def start(self):
        self._start = clock.current().now()

    def stop(self):
        end = clock.current().now()
        info = EnergyInfo(source="wallplug", measured=False, method="100 W x window")
        return EnergyReading(100.0 * (end - self._start), info, start_s=self._start, end_s=end)

    def close(self):
        self._start = None


def create(config, devices):
    return WallPlug()
'''
PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "llem-wallplug"
version = "1.0"

[project.entry-points."pytest_llem.meters"]
wallplug = "llem_wallplug:create"

[tool.setuptools]
py-modules = ["llem_wallplug"]
"""
SUITE = """
import pytest

@pytest.mark.llem(model="tiny", max_new_tokens=2, n_prompts=1, repeats=1, warmup=0,
                  energy={"meter": "wallplug", "baseline_s": 0})
def test_wallplug(llem):
    result = llem.run()
    assert result.energy.source == "wallplug" and result.energy_j > 0
    window = sum(r.window_s for r in result.repeats)
    assert result.energy_j == pytest.approx(100.0 * window)
"""


def test_builtin_names_are_listed_without_reading_entry_points() -> None:
    assert "estimate" in METERS.builtin and "transformers" in ENGINES.builtin
    assert set(METERS.builtin) <= set(METERS)


def test_an_unknown_name_is_one_line_naming_what_is_registered() -> None:
    registry = Registry("meter", "pytest_llem.tests.nothing", {"a": Entry("json:dumps")})
    with pytest.raises(ValueError, match=r"meter='b' is not registered; registered: a$"):
        registry.load("b")
    assert registry.load("a").__name__ == "dumps"


def test_a_meter_from_an_installed_distribution_is_registered_and_measures(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "llem-wallplug"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "llem_wallplug.py").write_text(textwrap.dedent(WALLPLUG))
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(project),
        ],
        check=True,
        timeout=300,
    )
    pytester.makepyfile(SUITE)
    monkeypatch.setenv("PYTHONPATH", str(target))  # where the distribution is installed
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # and without the distribution, the same name is an error naming the registered meters
    monkeypatch.delenv("PYTHONPATH")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*energy.meter='wallplug' is invalid*registered: auto, zeus, nvml*"])
