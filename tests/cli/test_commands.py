"""The `llem` command on good and bad input: one line and exit 2 for bad input, never a
traceback; `-o` for every format; help for every argument; `.llem` found from below."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from factories import stored_run

from pytest_llem.cli import commands as cli
from pytest_llem.gate.compare import LOWER_IS_BETTER
from pytest_llem.hardware.environment import tool_version
from pytest_llem.store.report import write_report


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / ".llem"
    stored_run(root, "base")
    stored_run(root, "head", scale=1.01)
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


BAD_REPORTS = {
    "an empty list": "[]",
    "a string": '"hello"',
    "invalid JSON": "{not json",
    "a wrong object": '{"schema_version": 1, "experiments": 3}',
}


@pytest.mark.parametrize("content", BAD_REPORTS.values(), ids=BAD_REPORTS.keys())
def test_compare_with_a_bad_report_is_one_line_and_exit_2(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for argv in (["compare", str(bad), "head"], ["compare", "base", str(bad)], ["show", str(bad)]):
        code, out, err = _run(capsys, "--dir", str(store), *argv)
        assert code == 2 and out == ""
        assert err.startswith("llem: ") and err.count("\n") == 1 and str(bad) in err, err


def test_compare_with_a_missing_report_or_an_unwritable_output_is_one_line_and_exit_2(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "--dir", str(store), "compare", "base", str(tmp_path / "missing.json"))
    assert code == 2 and err.count("\n") == 1 and "missing.json" in err and "llem list" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    for output_format in ("table", "markdown", "json", "github-action-benchmark"):
        target = blocker / "out.txt"
        code, out, err = _run(
            capsys,
            "--dir",
            str(store),
            "compare",
            "base",
            "head",
            "--format",
            output_format,
            "-o",
            str(target),
        )
        assert (
            code == 2
            and out == ""
            and err == f"llem: --output={target}: cannot write: {blocker} is not a directory\n"
        )


@pytest.mark.parametrize("output_format", ["table", "markdown", "json", "github-action-benchmark"])
def test_output_file_works_for_every_format(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], output_format: str
) -> None:
    target = tmp_path / f"out.{output_format}"
    code, out, _ = _run(
        capsys, "--dir", str(store), "compare", "base", "head", "--format", output_format, "-o", str(target)
    )
    assert code == 0 and out == ""
    text = target.read_text()
    assert "t.py::a" in text
    if output_format == "table":
        assert "verdict" in text and "\x1b[" not in text  # plain text, no terminal colour codes


@pytest.mark.parametrize(
    "rule",
    [
        "tokens_per_second:nan",
        "tokens_per_second:inf",
        "tokens_per_second:1e309",
        "tokens_per_second:0",
        "tokens_per_second:-5",
        "speed:5",
        "tokens_per_second",
    ],
)
def test_compare_refuses_a_fail_on_rule_that_would_disable_the_gate(
    store: Path, capsys: pytest.CaptureFixture[str], rule: str
) -> None:
    code, out, err = _run(capsys, "--dir", str(store), "compare", "base", "head", "--fail-on", rule)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"llem: --fail-on={rule!r}: ")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"llem (pytest-llem) {tool_version()}\n"


def test_every_argument_has_help_and_fail_on_lists_every_gated_metric() -> None:
    parser = cli._parser()
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.extend(action.choices.values())
    for each in parsers:
        for action in each._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{each.prog}: {action.dest} has no help"
    compare_help = " ".join(next(p for p in parsers if p.prog.endswith("compare")).format_help().split())
    assert f"METRIC is one of: {', '.join(LOWER_IS_BETTER)};" in compare_help


def test_list_finds_the_store_from_a_subdirectory_as_git_finds_dot_git(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    code, out, _ = _run(capsys, "list")
    assert code == 0 and str(store / "runs") in out.replace("\n", "")
    assert "base" in out and "head" in out and "yes" in out
    code, _, _ = _run(capsys, "show", "base")
    assert code == 0


def test_merge_refuses_duplicate_test_ids_in_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "merged.json"
    code, _, err = _run(capsys, "--dir", str(store), "merge", "base", "head", "-o", str(target))
    assert code == 2 and not target.exists()
    assert err == (
        "llem: cannot merge: test id 't.py::a' is in base and head; merge runs of different tests "
        "(to set two runs of the same tests side by side, use `llem compare`)\n"
    )
    stored_run(store, "other", "t.py::b")
    code, _, err = _run(capsys, "--dir", str(store), "merge", "base", "other", "-o", str(target))
    assert code == 0 and [e["nodeid"] for e in json.loads(target.read_text())["experiments"]] == [
        "t.py::a",
        "t.py::b",
    ]


def test_merging_runs_of_two_machines_keeps_each_experiments_machine(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = stored_run(store, "node-a", "t.py::a")
    second = stored_run(store, "node-b", "t.py::b")
    second.fingerprint = "other-machine"
    (path_b,) = [p for p in (store / "runs").glob("*node-b*/report.json")]
    write_report(second, path_b)
    target = tmp_path / "suite.json"
    code, _, _ = _run(capsys, "--dir", str(store), "merge", "node-a", "node-b", "-o", str(target))
    assert code == 0
    merged = json.loads(target.read_text())
    assert merged["fingerprint"] is None  # two machines: none speaks for the whole report
    assert {e["nodeid"]: e["fingerprint"] for e in merged["experiments"]} == {
        "t.py::a": first.fingerprint,
        "t.py::b": "other-machine",
    }
    # comparisons stay per machine: a rerun of both tests on machine a compares with a's
    # experiment, and b's (from the other machine) is not comparable
    stored_run(store, "rerun", "t.py::a", "t.py::b")
    code, out, _ = _run(capsys, "--dir", str(store), "compare", str(target), "rerun", "--format", "json")
    verdicts = {c["nodeid"]: c["verdict"] for c in json.loads(out)}
    assert verdicts["t.py::a"] != "not comparable" and verdicts["t.py::b"] == "not comparable"
