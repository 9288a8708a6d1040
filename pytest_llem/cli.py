"""The `llem` command: compare two runs, list stored runs, show or merge reports.

Exit codes: 0 success (and no regression), 1 a regression under --fail-on, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pytest_llem.compare import (
    HEADERS,
    FailRule,
    compare_reports,
    github_action_benchmark,
    table_rows,
    to_markdown,
)
from pytest_llem.report import ReportError, atomic_write, read_report, write_report
from pytest_llem.storage import RunStore
from pytest_llem.summary import render_summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llem", description="pytest-llem reports: compare, list, show, merge"
    )
    parser.add_argument("--dir", default=".llem", help="root of stored runs (default .llem)")
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", help="compare two runs experiment by experiment")
    compare.add_argument("base", help="baseline: report.json, run directory, stored run name, or 'latest'")
    compare.add_argument("head", help="new run: report.json, run directory or stored run name")
    compare.add_argument("--markdown", action="store_true", help="print a Markdown table for a PR comment")
    compare.add_argument(
        "--format",
        choices=["table", "markdown", "json", "github-action-benchmark"],
        default=None,
        help="output format (default table; github-action-benchmark writes customSmallerIsBetter JSON of HEAD)",
    )
    compare.add_argument("--output", "-o", help="write the output to this file instead of stdout")
    compare.add_argument(
        "--fail-on",
        action="append",
        default=None,
        metavar="METRIC:PCT",
        help="exit 1 on a significant regression beyond PCT (default energy_per_output_token_j:5, tokens_per_second:5)",
    )
    sub.add_parser("list", help="list stored runs")
    show = sub.add_parser("show", help="print a report's summary table")
    show.add_argument("report")
    merge = sub.add_parser("merge", help="merge reports of the same machine into one")
    merge.add_argument("reports", nargs="+")
    merge.add_argument("--output", "-o", required=True)
    return parser


def _emit(text: str, output: str | None) -> None:
    if output:

        def write(tmp: str) -> None:
            Path(tmp).write_text(text, encoding="utf-8")

        atomic_write(Path(output), write)
    else:
        sys.stdout.write(text)


def _compare(args: argparse.Namespace, store: RunStore) -> int:
    rules = tuple(FailRule.parse(text) for text in args.fail_on) if args.fail_on else None
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
        Console(width=160).print(table)
    regressions = [c for c in comparisons if c.regressed]
    if regressions:
        print(
            f"{len(regressions)} regression(s): " + ", ".join(c.nodeid for c in regressions), file=sys.stderr
        )
        return 1
    return 0


def _list(store: RunStore) -> int:
    runs = store.list_runs()
    if not runs:
        print(f"no stored runs under {store.runs_dir}")
        return 0
    table = Table(title=str(store.runs_dir), title_justify="left")
    for header in ("name", "created", "fingerprint", "commit", "experiments"):
        table.add_column(header)
    for run in runs:
        commit = (run.commit or "-")[:8] + ("-dirty" if run.dirty else "")
        table.add_row(escape(run.name), run.created_at, run.fingerprint or "-", commit, str(run.experiments))
    Console(width=160).print(table)
    return 0


def _merge(args: argparse.Namespace, store: RunStore) -> int:
    reports = [read_report(store.resolve(reference)) for reference in args.reports]
    fingerprints = {r.fingerprint for r in reports}
    if len(fingerprints) > 1:
        raise ReportError(
            f"cannot merge runs from different machines: fingerprints {sorted(map(str, fingerprints))}"
        )
    merged = reports[0].model_copy(deep=True)
    merged.experiments = [e for report in reports for e in report.experiments]
    write_report(merged, Path(args.output))
    print(f"merged {len(merged.experiments)} experiment(s) into {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    store = RunStore(Path(args.dir))
    try:
        if args.command == "compare":
            return _compare(args, store)
        if args.command == "list":
            return _list(store)
        if args.command == "show":
            report = read_report(store.resolve(args.report))
            sys.stdout.write(render_summary(report.experiments, f"{report.run_id} ({report.created_at})"))
            return 0
        return _merge(args, store)
    except (ReportError, ValueError) as exc:
        print(f"llem: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
