"""`llem run`: one experiment from the command line, without writing a test.

    llem run --model smollm2-135m --batch-size 4 --dtype bfloat16

The settings go through the same `build_config` as a marker or `llem.run()` (same validation,
same one-line errors), the experiment through the same `ExperimentSession`, and the result
into the same stored run (report.json, experiments.parquet, timeseries) with the same summary
table, and the HTML report with `--html`. Any setting without its own flag is reachable with
`--set KEY=VALUE` (dotted keys, JSON values: `--set energy.sample_hz=5`).
Exit codes: 0 the experiment ran, 1 it failed, 2 bad input or the report could not be written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from pytest_llem.hardware.environment import git_state
from pytest_llem.measure.emissions import resolve_intensity
from pytest_llem.measure.session import ExperimentSession
from pytest_llem.plugin.options import RUN_OPTIONS, Option, option_by_flag
from pytest_llem.plugin.progress import Heartbeat, LiveStatus, PlainLines, Tracker
from pytest_llem.render.summary import render_summary, report_lines
from pytest_llem.schema.config import ExperimentConfig, build_config
from pytest_llem.schema.errors import ConfigError
from pytest_llem.schema.results import ExperimentResult
from pytest_llem.store.report import new_report
from pytest_llem.store.runs import RunStore, SessionRun, check_run_name, utc_now
from pytest_llem.store.writer import ReportWriter

SOURCE = "llem run"


def _argument_type(option: Option) -> Callable[[str], Any]:
    """The option's parser as argparse wants it: a failure names the flag and says what fits
    ("argument --isolation: invalid value 'x': expected one of process, none")."""
    if option.parse in (int, float, str):
        return option.parse

    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None

    return parse


def add_run_parser(sub: Any) -> None:
    """Register `llem run` on the `llem` sub-command parser: its arguments are the options of
    the one option table that `llem run` takes (`plugin.options.RUN_OPTIONS`)."""
    run = sub.add_parser(
        "run",
        help="run one experiment without writing a test (same settings, report and summary as pytest)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    for option in RUN_OPTIONS:
        run.add_argument(
            option.run_flag,
            dest=option.ini,
            type=_argument_type(option),
            metavar=option.metavar,
            help=option.run_help or option.help,
        )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, dotted key and JSON value (e.g. energy.sample_hz=5); repeatable",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no live progress")


def _value(args: argparse.Namespace, flag: str) -> Any:
    """The value `llem run` got for the table's option `flag` (None when not given)."""
    return getattr(args, option_by_flag(flag).ini)


def _assign(layer: dict[str, Any], dotted: str, value: Any) -> None:
    target = layer
    *parents, last = dotted.split(".")
    for part in parents:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"llem run --set {dotted}: '{part}' is not a group of settings")
        target = child
    target[last] = value


def settings_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The experiment settings the command line gives, shaped like marker keywords."""
    layer: dict[str, Any] = {}
    for option in RUN_OPTIONS:
        value = getattr(args, option.ini)
        if option.config_path is not None and value is not None:
            _assign(layer, ".".join(option.config_path), value)
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"llem run --set {item!r}: expected KEY=VALUE, e.g. --set energy.sample_hz=5")
        try:
            value = json.loads(text)
        except ValueError:
            value = text  # a bare word: a string setting
        _assign(layer, key.strip(), value)
    return layer


def _tracker(quiet: bool) -> tuple[Tracker | None, Heartbeat | None]:
    """Progress on stderr (stdout keeps the summary): live on a terminal, lines elsewhere."""
    if quiet:
        return None, None
    if sys.stderr.isatty():
        return LiveStatus(Console(stderr=True)), None
    lines = PlainLines(sys.stderr)
    return lines, Heartbeat(lines)


def nodeid_for(config: ExperimentConfig) -> str:
    """A stable test-like id, so `llem compare` matches the same command across runs."""
    return f"llem-run::{config.model}[{config.engine}-{config.dtype}-bs{config.batch_size}]"


def run_command(args: argparse.Namespace, store: RunStore) -> int:
    try:
        config = build_config((SOURCE, settings_layer(args)))
        carbon = resolve_intensity(_value(args, "--llem-carbon-intensity"), _value(args, "--llem-country"))
        save, json_path = _value(args, "--llem-save"), _value(args, "--llem-json")
        if save is not None:
            check_run_name("--save", save)
    except (ConfigError, ValueError) as exc:
        print(f"llem: {exc}", file=sys.stderr)
        return 2
    commit, dirty = git_state(Path.cwd())
    run = SessionRun(store, save, commit, dirty, Path(json_path).resolve() if json_path else None)
    started = utc_now()
    report_path = run.report_path(started)  # creates the run directory (exclusively) now
    session = ExperimentSession(output_dir=report_path.parent, isolation=_value(args, "--llem-isolation"))
    session.carbon = carbon
    tracker, heartbeat = _tracker(args.quiet)
    if tracker is not None:
        session.progress = tracker
        tracker.begin_experiment(nodeid_for(config).split("::", 1)[1], 1, 1)
    if heartbeat is not None:
        heartbeat.start()
    try:
        result = session.run(config, nodeid_for(config))
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if tracker is not None:
            tracker.end_experiment()
        session.close()
    return _report(result, session, store, run, report_path, _value(args, "--llem-html"))


def _report(
    result: ExperimentResult,
    session: ExperimentSession,
    store: RunStore,
    run: SessionRun,
    report_path: Path,
    html: str | None,
) -> int:
    environment = session.environment()
    report = new_report(
        environment, utc_now(), store.fingerprint(environment), report_path.parent.name, run.name
    )
    sys.stdout.write(render_summary([result], f"llem run: {result.config.model}; energy per output token"))
    writer = ReportWriter(report, report_path)
    appended = writer.add_experiment(result)
    error = writer.finish(completed=True) or appended
    if error:
        print(f"llem: {error}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(report_path)))
    if html:
        from pytest_llem.render.html import write_session_html

        print(write_session_html(report, report_path, store, Path(html)))
    if result.status != "passed":
        print(f"llem: experiment {result.status}: {result.error}", file=sys.stderr)
        return 1
    return 0
