"""Every pytest-llem option, defined once: command-line flag, ini twin, help text, type.

Precedence for experiment settings: llem.run() overrides > @pytest.mark.llem keywords >
command line > ini file > built-in defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Option:
    flag: str
    ini: str
    help: str
    parse: Callable[[str], Any] = str
    config_path: tuple[str, ...] | None = None  # where it lands in ExperimentConfig
    metavar: str | None = None
    repeatable: bool = False
    is_flag: bool = False


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


OPTIONS = (
    Option(
        "--llem-energy",
        "llem_energy",
        "energy meter: auto, nvml, zeus, rapl, codecarbon, estimate or none (default auto)",
        config_path=("energy", "meter"),
        metavar="METER",
    ),
    Option(
        "--llem-model",
        "llem_model",
        "model for experiments that name none: built-in alias (tiny, smollm2-135m), local directory or hub id",
        config_path=("model",),
        metavar="MODEL",
    ),
    Option(
        "--llem-device",
        "llem_device",
        "device: auto, cpu, cuda or cuda:N (default auto)",
        config_path=("device",),
        metavar="DEVICE",
    ),
    Option(
        "--llem-repeats",
        "llem_repeats",
        "measurement windows per experiment (default 3)",
        int,
        ("repeats",),
        "N",
    ),
    Option(
        "--llem-warmup",
        "llem_warmup",
        "fixed warmup generate calls before measuring (default 5)",
        int,
        ("warmup", "n_warmup"),
        "N",
    ),
    Option(
        "--llem-threads",
        "llem_threads",
        "torch CPU threads, fixed and recorded (default: all cores)",
        int,
        ("num_threads",),
        "N",
    ),
    Option(
        "--llem-baseline-s",
        "llem_baseline_s",
        "idle baseline seconds; 0 turns it off (default 30 on GPU, 2 otherwise)",
        float,
        ("energy", "baseline_s"),
        "SECONDS",
    ),
    Option(
        "--llem-watts-per-core",
        "llem_watts_per_core",
        "estimate meter: assumed watts per busy CPU core (default 10)",
        float,
        ("energy", "watts_per_core"),
        "WATTS",
    ),
    Option(
        "--llem-sample-hz",
        "llem_sample_hz",
        "power/thermal sampler rate in Hz (default 10)",
        float,
        ("energy", "sample_hz"),
        "HZ",
    ),
    Option(
        "--llem-json",
        "llem_json",
        "write the session report to PATH (experiments.parquet goes beside it)",
        metavar="PATH",
    ),
    Option(
        "--llem-dir",
        "llem_dir",
        "root directory of stored runs (default .llem under the rootdir)",
        metavar="DIR",
    ),
    Option("--llem-save", "llem_save", "also store this run as .llem/runs/NAME", metavar="NAME"),
    Option(
        "--llem-autosave",
        "llem_autosave",
        "point .llem/latest at this run so --llem-compare=latest finds it",
        _bool,
        is_flag=True,
    ),
    Option(
        "--llem-compare",
        "llem_compare",
        "compare each experiment with a baseline report: a path, a run name, or 'latest'",
        metavar="BASELINE",
    ),
    Option(
        "--llem-fail-on",
        "llem_fail_on",
        "fail on a significant regression, METRIC:PCT, repeatable (default energy_per_output_token_j:5 and tokens_per_second:5)",
        metavar="METRIC:PCT",
        repeatable=True,
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("llem", "LLM inference energy experiments (pytest-llem)")
    for option in OPTIONS:
        dest = option.ini
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=dest, help=option.help)
            parser.addini(option.ini, option.help, type="bool", default=False)
        elif option.repeatable:
            group.addoption(
                option.flag,
                action="append",
                default=None,
                dest=dest,
                metavar=option.metavar,
                help=option.help,
            )
            parser.addini(option.ini, option.help, type="linelist", default=[])
        else:
            group.addoption(
                option.flag, action="store", default=None, dest=dest, metavar=option.metavar, help=option.help
            )
            parser.addini(option.ini, option.help, default=None)


def option_value(config: pytest.Config, option: Option) -> Any:
    """Command line first, then the ini twin; parsed, or None when neither is set."""
    value = config.getoption(option.ini)
    if value is None or value == []:
        value = config.getini(option.ini)
    if value is None or value == [] or value == "":
        return None
    if option.is_flag or option.repeatable:
        return value
    try:
        return option.parse(str(value))
    except ValueError:
        raise pytest.UsageError(
            f"{option.flag} / {option.ini} = {value!r}: expected {option.metavar or 'a value'}"
        ) from None


def option_by_flag(flag: str) -> Option:
    return next(option for option in OPTIONS if option.flag == flag)


def experiment_layer(config: pytest.Config) -> dict[str, Any]:
    """The experiment settings given on the command line or in the ini file."""
    layer: dict[str, Any] = {}
    for option in OPTIONS:
        if option.config_path is None:
            continue
        value = option_value(config, option)
        if value is None:
            continue
        target = layer
        for part in option.config_path[:-1]:
            target = target.setdefault(part, {})
        target[option.config_path[-1]] = value
    return layer
