"""The session-level options (those that set no experiment setting), parsed once and typed.

Every option is a row of `options.TABLE` (flag, ini twin, parser); the experiment settings go
into `options.experiment_layer`, and the rest land here, each under its ini name without the
`llem_` prefix, read command line first, then the ini file. The first reader parses them all
(a bad value is one `pytest.UsageError` naming its flag or ini key) and keeps them in
`config.stash`; every later reader - the xdist worker count, the gate, the report writer - gets
the same object. tests/plugin/test_session_options.py checks that the fields and the table's
session rows agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pytest_llem.plugin.options import TABLE, Option, option_value


@dataclass(frozen=True)
class SessionOptions:
    """What the session was asked to do besides measuring (docs/usage.md lists each flag)."""

    json: str | None = None
    html: str | None = None
    dir: str | None = None
    save: str | None = None
    autosave: bool = False
    compare: str | None = None
    fail_on: tuple[str, ...] = ()
    fail_on_inconclusive: bool = False
    fail_on_invalid: bool = False
    require_valid: bool = False
    ab: str | None = None
    ab_max_pairs: int | None = None
    ab_budget_s: float | None = None
    markdown: str | None = None
    shard: str | None = None
    shard_durations: str | None = None
    gpus_per_worker: int | None = None
    carbon_intensity: float | None = None
    country: str | None = None
    isolation: str | None = None

    @property
    def gates(self) -> bool:
        """Whether the regression gate is on: a stored baseline, A/B, or a rule to fail on."""
        return bool(self.compare or self.ab or self.fail_on or self.fail_on_inconclusive)


SESSION_OPTIONS_KEY = pytest.StashKey[SessionOptions]()


def field_name(option: Option) -> str:
    """The option's field in `SessionOptions`: its ini name without `llem_`."""
    return option.ini.removeprefix("llem_")


def session_rows() -> list[Option]:
    """The rows of the option table that are session options (pytest's, no experiment setting)."""
    return [option for option in TABLE if option.pytest and option.config_path is None]


def session_options(config: pytest.Config) -> SessionOptions:
    """The session's options, parsed on first use and kept in `config.stash`."""
    cached = config.stash.get(SESSION_OPTIONS_KEY, None)
    if cached is not None:
        return cached
    values: dict[str, Any] = {}
    for option in session_rows():
        value = option_value(config, option)
        if option.is_flag:
            value = bool(value)
        elif option.repeatable:
            value = tuple(value or ())
        values[field_name(option)] = value
    parsed = SessionOptions(**values)
    config.stash[SESSION_OPTIONS_KEY] = parsed
    return parsed
