"""docs/testing.md's "Testing without hardware" example, run as written: it writes its timeseries
under `output_dir` and its 30 s idle baseline passes in simulated time, not real time."""

import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from factories import stored_run

from pytest_llem.schema.results import ExperimentResult, SessionReport
from pytest_llem.testing import Simulation

README = Path(__file__).resolve().parents[1] / "docs" / "testing.md"


def _example() -> str:
    section = README.read_text().split("# Testing without hardware", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section has no python example"
    return match.group(1)


def test_the_readme_simulation_example_writes_its_timeseries_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    started = time.process_time()
    exec(compile(_example(), str(README), "exec"), namespace)
    result, sim = namespace["result"], namespace["sim"]
    assert isinstance(result, ExperimentResult) and isinstance(sim, Simulation)
    assert result.status == "passed", result.error
    assert result.baseline_power_w == 120.0  # the idle baseline ran, at the trace's first level
    assert result.timeseries_path is not None
    table = pq.read_table(tmp_path / "sim-run" / result.timeseries_path)
    assert table.num_rows >= 2 and set(table.column("gpu_index").to_pylist()) == {0}
    assert sim.clock.now() > 30.0  # simulated seconds
    # CPU time, not wall time (immune to a busy machine): far below the 30 s it simulates
    assert time.process_time() - started < 20.0
    assert "simulated time:" in capsys.readouterr().out


# -- every page: the README and docs/*.md ------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(language: str | None = None) -> list[tuple[Path, str, str]]:
    found = []
    for page in PAGES:
        for lang, body in FENCE.findall(page.read_text()):
            if language is None or lang == language:
                found.append((page, lang, body))
    return found


def test_the_readme_fits_a_first_read() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def test_every_relative_link_in_the_docs_names_a_file_that_exists() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []


def test_every_llem_option_a_command_in_the_docs_uses_exists() -> None:
    from pytest_llem.plugin.options import OPTIONS

    known = {option.flag for option in OPTIONS}
    used = set()
    for _, lang, body in _blocks():
        if lang in ("", "bash", "yaml", "sh"):
            used.update(re.findall(r"(--llem-[a-z-]+)", body))
    assert used, "the docs show no command with a --llem- option"
    assert used - known == set()


def test_every_llem_subcommand_in_the_docs_exists() -> None:
    from pytest_llem.cli.commands import _parser

    parser = _parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert subcommands is not None
    used = set()
    for _, lang, body in _blocks():
        if lang in ("", "bash", "yaml", "sh"):
            used.update(re.findall(r"^\s*(?:\S*/)?llem (\w+)", body, re.M))  # a command line
    assert used and used - set(subcommands) == set()


def test_every_benchmark_example_in_the_docs_collects_and_its_marker_is_a_valid_config(
    pytester: pytest.Pytester,
) -> None:
    """The docs' benchmark tests are collected by pytest with the plugin (strict markers,
    parametrisation) and their marker settings pass the same validation as a run. Running them
    would load real models for minutes: the main job (`benchmarks/`) does that."""
    from pytest_llem import build_config

    examples = [(page, body) for page, _, body in _blocks("python") if "def test_" in body]
    assert examples
    for number, (page, body) in enumerate(examples):
        pytester.makepyfile(**{f"test_doc_{number}": body})
        for settings in re.findall(r"@pytest\.mark\.llem\((.*?)\)\n", body):
            build_config((str(page), eval(f"dict({settings})")))
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    assert "error" not in result.stdout.str().lower()


def test_the_readme_plain_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    examples = [
        body for page, _, body in _blocks("python") if page.name == "README.md" and "run_experiment" in body
    ]
    assert len(examples) == 1
    namespace: dict[str, object] = {}
    exec(compile(examples[0], "README.md", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, ExperimentResult)
    # one pass over the prompts, however many passes the calibrated window holds
    assert result.status == "passed" and result.output_tokens == 2 * 4
    assert result.energy is not None and result.energy_label in ("measured", "estimated")


def test_the_readmes_first_test_passes_at_the_defaults(pytester: pytest.Pytester) -> None:
    """The README's first test, on `tiny`, run as a user would: no option, the defaults."""
    [first] = [
        body
        for page, _, body in _blocks("python")
        if page.name == "README.md" and body.startswith("# test_first.py")
    ]
    pytester.makepyfile(test_first=first)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_tiny*tiny*transformers*passed*(estimated)*"])


def test_every_example_of_the_cli_page_runs_against_a_store_of_stored_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/cli.md's `llem` lines, run as written (with `--dir` naming a store of three runs:
    `base`, `head` of the same test, `shard-2` of another); each exits 0."""
    import shlex

    from pytest_llem.cli.commands import main

    store = tmp_path / ".llem"
    stored_run(store, "base")
    stored_run(store, "head", scale=1.01)
    stored_run(store, "shard-2", "t.py::b")
    monkeypatch.chdir(tmp_path)
    page = REPO / "docs" / "cli.md"
    lines = [
        line.strip()
        for lang, body in FENCE.findall(page.read_text())
        if lang == "bash"
        for line in body.splitlines()
        if line.strip().startswith("llem ")
    ]
    assert {line.split()[1] for line in lines} >= {"list", "show", "compare", "trend", "report", "merge"}
    for line in lines:
        code = main([*shlex.split(line)[1:], "--dir", str(store)])
        assert code == 0, (line, capsys.readouterr())


def test_the_report_page_names_every_field_of_the_report_and_every_parquet_column() -> None:
    """docs/reports.md cannot drift from the schema: every field of a report and of an
    experiment, and every column of experiments.parquet, is named there (the phases' and the
    steady state's and a served load's columns as the families `phase_*`, `steady_state_*` and
    `served_*`, one per field)."""
    from pytest_llem.store.report import experiments_schema

    text = (REPO / "docs" / "reports.md").read_text()
    fields = [*SessionReport.model_fields, *ExperimentResult.model_fields]
    assert [name for name in fields if f"`{name}`" not in text] == []
    columns = [column.name for column in experiments_schema()]
    families = ("phase_", "steady_state_", "served_")
    assert [c for c in columns if f"`{c}`" not in text and not c.startswith(families)] == []


def test_the_development_pages_module_list_is_the_package_tree() -> None:
    """docs/development.md lists every module of the package, at its place in the tree, and
    nothing else: a module added or moved without its line fails here."""
    text = (REPO / "docs" / "development.md").read_text()
    block = text[text.index("```\npytest_llem/\n") + 4 :]
    block = block[: block.index("```")]
    listed: set[str] = set()
    parents: list[str] = []
    for line in block.splitlines()[1:]:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        parents = parents[: depth - 1]
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
        else:
            listed.add("/".join(["pytest_llem", *parents, name]))
    package = REPO / "pytest_llem"
    present = {
        str(path.relative_to(REPO))
        for path in [*package.rglob("*.py"), *package.rglob("*.j2")]
        if "__pycache__" not in path.parts
    }
    assert listed == present
