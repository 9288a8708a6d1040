"""The `llem` command: compare two runs, list stored runs, show or merge reports.

Exit codes: 0 success (and no regression), 1 a regression under --fail-on, 2 bad input
(a missing or invalid report, an unwritable output file): one line on stderr, never a
traceback. Stored runs live in the nearest `.llem` directory at or above the current one,
found the way git finds `.git`, unless `--dir` names one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from pytest_llem.cli.run import add_run_parser, run_command
from pytest_llem.gate.compare import FailRule, compare_reports
from pytest_llem.gate.gated_metrics import fail_on_help
from pytest_llem.hardware.environment import tool_version
from pytest_llem.render.comparison import HEADERS, github_action_benchmark, table_rows, to_markdown
from pytest_llem.render.html import html_command
from pytest_llem.render.summary import render_summary, table_text
from pytest_llem.render.trend import trend_command
from pytest_llem.schema.results import SessionReport
from pytest_llem.store.files import write_text
from pytest_llem.store.report import ReportError, read_report, write_report
from pytest_llem.store.runs import RunStore, find_llem_dir

REPORT_HELP = (
    "a report.json, a run directory, a stored run name (newest complete run saved under it), a commit, "
    "or 'latest' (the newest complete stored run)"
)


DIR_HELP = (
    "root of stored runs (default: the nearest .llem at or above the current directory, as git finds .git)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llem",
        description="pytest-llem: run one experiment; compare, list, show, merge, trend and report runs",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"llem (pytest-llem) {tool_version()}",
        help="print the version",
    )
    parser.add_argument("--dir", default=None, help=DIR_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compare = sub.add_parser("compare", help="compare two runs experiment by experiment")
    compare.add_argument(
        "base",
        help="baseline: a report.json, a run directory, a stored run name (newest complete run saved "
        "under it), a commit, or 'latest' (newest complete run of HEAD's machine)",
    )
    compare.add_argument("head", help=f"new run: {REPORT_HELP}")
    compare.add_argument("--markdown", action="store_true", help="print a Markdown table for a PR comment")
    compare.add_argument(
        "--format",
        choices=["table", "markdown", "json", "github-action-benchmark"],
        default=None,
        help="output format (default table; github-action-benchmark writes customSmallerIsBetter JSON of HEAD)",
    )
    compare.add_argument(
        "--output", "-o", metavar="FILE", help="write the output (any format) to FILE instead of stdout"
    )
    compare.add_argument(
        "--fail-on",
        action="append",
        default=None,
        metavar="METRIC:PCT",
        help=fail_on_help("energy_per_output_token_j:5 and tokens_per_second:5", verb="exit 1"),
    )
    compare.add_argument(
        "--fail-on-inconclusive",
        action="store_true",
        help="also exit 1 when a verdict is inconclusive (the interval could not decide)",
    )
    ab = sub.add_parser(
        "ab",
        help="A/B gate: run `pytest ARGS --llem-ab REF` (base REF and working tree, windows interleaved)",
    )
    ab.epilog = "example: llem ab origin/main -- benchmarks/ --llem-markdown llem-comment.md"
    ab.add_argument("ref", help="base revision: a branch, origin/main, a tag or a commit")
    ab.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- then the pytest command line")
    sub.add_parser("list", help="list stored runs (name, time, machine, commit, completed)")
    show = sub.add_parser("show", help="print a report's summary table")
    show.add_argument("report", help=REPORT_HELP)
    merge = sub.add_parser(
        "merge", help="merge reports of different tests (shards, or runs on several machines) into one"
    )
    merge.add_argument("reports", nargs="+", help=f"two or more reports: {REPORT_HELP}")
    merge.add_argument(
        "--output", "-o", required=True, metavar="FILE", help="where to write the merged report.json"
    )
    html = sub.add_parser("report", help="write a run's self-contained HTML report (charts, trend, warnings)")
    html.add_argument("report", help=REPORT_HELP)
    html.add_argument("--output", "-o", required=True, metavar="FILE", help="where to write the .html file")
    trend = sub.add_parser("trend", help="J/token and tokens/s of each experiment across stored runs")
    trend.add_argument(
        "--all-machines",
        action="store_true",
        help="include runs of every machine (default: only the machine of the newest stored run)",
    )
    trend.add_argument("--last", type=int, metavar="N", help="only the newest N runs")
    trend.add_argument(
        "--format", choices=["table", "json"], default="table", help="output format (default table)"
    )
    trend.add_argument("--output", "-o", metavar="FILE", help="write the output to FILE instead of stdout")
    add_run_parser(sub)
    # `llem list --dir D` as well as `llem --dir D list`: given after the command, it wins
    for command in sub.choices.values():
        command.add_argument("--dir", default=argparse.SUPPRESS, help=DIR_HELP)
    return parser


def _emit(text: str, output: str | None) -> None:
    if output:
        try:
            write_text(Path(output), text)
        except OSError as exc:
            raise ReportError(f"--output={output}: cannot write: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)


def _render(table: Table) -> str:
    return table_text(table, 160)


def _compare(args: argparse.Namespace, store: RunStore) -> int:
    rules = tuple(FailRule.parse(text, "--fail-on") for text in args.fail_on) if args.fail_on else None
    head_path = store.resolve(args.head)
    head = read_report(head_path)
    base_path = (
        store.resolve("latest", head.fingerprint, exclude=head_path.parent)
        if args.base == "latest"
        else store.resolve(args.base)
    )
    base = read_report(base_path)
    comparisons = compare_reports(base, head, rules)
    output_format = args.format or ("markdown" if args.markdown else "table")
    if output_format == "markdown":
        _emit(to_markdown(comparisons, f"pytest-llem: {base.run_id} → {head.run_id}"), args.output)
    elif output_format == "json":
        _emit(json.dumps([c.model_dump(mode="json") for c in comparisons], indent=2) + "\n", args.output)
    elif output_format == "github-action-benchmark":
        _emit(json.dumps(github_action_benchmark(head), indent=2) + "\n", args.output)
    else:
        table = Table(title=f"{base.run_id} → {head.run_id}", title_justify="left")
        for header in HEADERS:
            table.add_column(header, overflow="fold")
        for row in table_rows(comparisons):
            table.add_row(*(escape(cell) for cell in row))
        _emit(_render(table), args.output)
    regressions = [c for c in comparisons if c.fails(args.fail_on_inconclusive)]
    if regressions:
        print(
            f"{len(regressions)} failing verdict(s): "
            + ", ".join(f"{c.nodeid} ({c.verdict})" for c in regressions),
            file=sys.stderr,
        )
        return 1
    return 0


def _ab(args: argparse.Namespace) -> int:
    """`llem ab REF -- pytest ARGS`: the same as `pytest ARGS --llem-ab REF`, for scripts that
    prefer a command named after what it does."""
    import subprocess

    command = list(args.pytest_args)
    if command[:1] == ["--"]:
        command = command[1:]
    if command[:1] == ["pytest"]:
        command = command[1:]
    return subprocess.call([sys.executable, "-m", "pytest", *command, f"--llem-ab={args.ref}"])


def _list(store: RunStore) -> int:
    runs = store.list_runs()
    if not runs:
        print(f"no stored runs under {store.runs_dir}")
        return 0
    table = Table(title=str(store.runs_dir), title_justify="left")
    for header in ("run", "saved as", "created", "fingerprint", "commit", "experiments", "completed"):
        table.add_column(header)
    for run in runs:
        commit = (run.commit or "-")[:8] + ("-dirty" if run.dirty else "")
        completed = {True: "yes", False: "no (interrupted or running)", None: "-"}[run.completed]
        table.add_row(
            escape(run.name),
            escape(run.saved_as or "-"),
            run.created_at,
            run.fingerprint or "-",
            commit,
            str(run.experiments),
            completed,
        )
    sys.stdout.write(_render(table))
    return 0


def _duplicate_ids(named: Sequence[tuple[str, SessionReport]]) -> str | None:
    """The first test id found twice among the reports to merge, with where."""
    seen: dict[str, str] = {}
    for reference, report in named:
        for experiment in report.experiments:
            if experiment.nodeid in seen:
                return f"{experiment.nodeid!r} is in {seen[experiment.nodeid]} and {reference}"
            seen[experiment.nodeid] = reference
    return None


def _missing_shards(shards: list[str | None]) -> str | None:
    """What is wrong with the shards among the merged runs (`--llem-shard I/N`): a count that
    differs, or shard numbers that are missing. None when no run is a shard, or all are there."""
    given = [shard for shard in shards if shard]
    if not given:
        return None
    counts = {int(shard.split("/")[1]) for shard in given}
    if len(counts) > 1 or len(given) != len(shards):
        return f"the runs are shards of different splits ({', '.join(s or 'no shard' for s in shards)})"
    count = counts.pop()
    absent = sorted(set(range(1, count + 1)) - {int(shard.split("/")[0]) for shard in given})
    if absent:
        return "shard " + ", ".join(f"{index}/{count}" for index in absent) + " is missing"
    return None


def _merge(args: argparse.Namespace, store: RunStore) -> int:
    named = [(reference, read_report(store.resolve(reference))) for reference in args.reports]
    reports = [report for _, report in named]
    balanced_by = {report.shard_balanced_by for report in reports if report.shard}
    if len(balanced_by) > 1:
        print(
            "warning: the shards were balanced by different earlier reports ("
            + ", ".join(f"{r.shard}: {r.shard_balanced_by or 'test ids'}" for r in reports if r.shard)
            + "), so a test may have run in two shards or in none; give every shard the same --llem-shard-durations",
            file=sys.stderr,
        )
    duplicate = _duplicate_ids(named)
    if duplicate:
        raise ReportError(
            f"cannot merge: test id {duplicate}; merge runs of different tests "
            "(to set two runs of the same tests side by side, use `llem compare`)"
        )
    missing = _missing_shards([report.shard for report in reports])
    if missing:
        raise ReportError(f"cannot merge: {missing}; merge every shard of the suite, or merge no shards")
    fingerprints = {r.fingerprint for r in reports}
    merged = reports[0].model_copy(deep=True)
    # each experiment keeps the machine it ran on; the merged report names one only if they agree
    merged.experiments = []
    for report in reports:
        for experiment in report.experiments:
            copied = experiment.model_copy()
            copied.fingerprint = experiment.fingerprint or report.fingerprint
            merged.experiments.append(copied)
    merged.fingerprint = fingerprints.pop() if len(fingerprints) == 1 else None
    merged.shard = None
    merged.shard_balanced_by = None
    merged.test_durations_s = {test: s for report in reports for test, s in report.test_durations_s.items()}
    merged.completed = all(report.completed is not False for report in reports)
    try:
        write_report(merged, Path(args.output))
    except OSError as exc:
        raise ReportError(f"--output={args.output}: cannot write: {exc.strerror or exc}") from None
    print(f"merged {len(merged.experiments)} experiment(s) into {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    store = RunStore(Path(args.dir) if args.dir else find_llem_dir(Path.cwd()))
    try:
        if args.command == "run":
            return run_command(args, store)
        if args.command == "compare":
            return _compare(args, store)
        if args.command == "ab":
            return _ab(args)
        if args.command == "list":
            return _list(store)
        if args.command == "show":
            report = read_report(store.resolve(args.report))
            sys.stdout.write(render_summary(report.experiments, f"{report.run_id} ({report.created_at})"))
            return 0
        if args.command == "report":
            return html_command(args, store)
        if args.command == "trend":
            return trend_command(args, store, _emit)
        return _merge(args, store)
    except (ReportError, ValueError, OSError) as exc:
        print(f"llem: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
