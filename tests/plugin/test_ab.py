"""A/B mode end to end: a tiny git project, a "pull request" in its working tree, and
`pytest --llem-ab HEAD` running base and head with their windows interleaved.

The project runs the `simulated` engine on a simulated GPU, its per-token time set in the
project's own package (`src/mypkg/model.py`, importable through a path into the head's tree,
as an editable install makes it), so the pull request changes model code, not config, and
the base must import the base's copy. Assertions are
on order, matching and verdicts that a 4x slowdown cannot miss; none on timings.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_llem.measure.baseline import Baseline
from pytest_llem.measure.progress import Progress
from pytest_llem.plugin.ab.protocol import HeadTurns
from pytest_llem.plugin.ab.protocol import TestExchange as Exchange  # not a test class to collect
from pytest_llem.plugin.ab.session import base_arguments
from pytest_llem.plugin.ab.worker import isolated_path, leaked_modules
from pytest_llem.schema.comparison import Verdict
from pytest_llem.schema.results import RepeatResult

pytest_plugins = ["pytester"]

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="A/B mode needs git")

CONFTEST = """
from mypkg import model
from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, simulated_gpus

def pytest_configure(config):
    workload = SimulatedWorkload(seconds_per_token=model.SECONDS_PER_TOKEN, prefill_seconds_per_token=0.0)
    power_w = getattr(model, "POWER_W", 200.0)
    simulation = simulated_gpus([SimulatedGpu(power_w=power_w, counter_period_s=0.0)], workload)
    simulation.__enter__()
    config.add_cleanup(lambda: simulation.__exit__(None, None, None))
"""

BENCH = """
import pytest

SETTINGS = dict(engine="simulated", model="sim", device="cuda:0", n_prompts=2, batch_size=2,
                max_new_tokens=8, repeats=6, warmup={"n_warmup": 2, "thermal_floor_s": 0},
                energy={"meter": "nvml", "baseline_s": 0, "sampler": False})

@pytest.mark.llem(**SETTINGS)
def test_generate(llem):
    # a user's own check, which must hold whatever passes the calibrated windows hold
    assert llem.run().output_tokens == 2 * 8
"""


def _git(path: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)


def _write_model(pytester: pytest.Pytester, seconds_per_token: float, power_w: float = 200.0) -> None:
    package = pytester.path / "src" / "mypkg"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(f"SECONDS_PER_TOKEN = {seconds_per_token}\nPOWER_W = {power_w}\n")


def _commit(pytester: pytest.Pytester, message: str) -> None:
    _git(pytester.path, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(pytester.path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # the package is found through a path into the head's tree (like `pip install -e .`)
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(filter(None, [str(pytester.path / "src"), os.environ.get("PYTHONPATH")])),
    )
    monkeypatch.syspath_prepend(str(pytester.path / "src"))
    pytester.makepyfile(conftest=CONFTEST, test_bench=BENCH)
    _write_model(pytester, 0.002)
    _git(pytester.path, "init", "-q")
    _git(pytester.path, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(pytester.path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    return pytester


def _report(pytester: pytest.Pytester) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((pytester.path / "head.json").read_text())
    return report


def _ab(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(
        "-p", "no:cacheprovider", "--llem-ab=HEAD", "--llem-json=head.json", "--junitxml=junit.xml", *args
    )


@needs_git
def test_a_slower_model_in_the_working_tree_is_worse_with_abba_windows(project: pytest.Pytester) -> None:
    _write_model(project, 0.008)  # the pull request: 4x the work, in the package
    project.makepyfile(
        test_new=BENCH.replace("test_generate", "test_added"),  # only in the head
    )
    result = _ab(project, "--llem-markdown=comment.md")
    result.assert_outcomes(failed=1, passed=1)
    # the simulated clock makes every pair exactly 4x: no spread, so the ratio is exact
    result.stdout.fnmatch_lines(
        ["*llem regression: energy_per_output_token_j +300.0% (limit 2%*", "*llem gate: 1 worse, 1 new*"]
    )
    assert "Traceback" not in result.stdout.str()
    experiments = {e["nodeid"]: e for e in _report(project)["experiments"]}
    comparison = experiments["test_bench.py::test_generate"]["comparison"]
    assert comparison["mode"] == "ab" and comparison["verdict"] == "worse"
    assert comparison["window_order"] == "ABBAABBAABBA"  # 6 pairs, base first in even pairs
    # exact on the simulated clock: settled at the minimum, the experiment's 6 repeats
    assert (comparison["pairs_taken"], comparison["stopped_because"]) == (6, "settled")
    assert comparison["config_changes"] == []
    assert "base_isolation_leaks" not in comparison  # the base imported its own mypkg
    gated = {m["metric"]: m for m in comparison["metrics"]}
    energy = gated["energy_per_output_token_j"]
    assert energy["verdict"] == "worse" and energy["n_pairs"] == 6 and energy["p_value"] < 0.05
    assert energy["ratio_ci95_low"] == pytest.approx(4.0)
    assert gated["tokens_per_second"]["verdict"] == "worse"
    assert experiments["test_new.py::test_added"]["comparison"]["verdict"] == "new"
    base = json.loads(Path(comparison["base_report"]).read_text())
    assert [e["nodeid"] for e in base["experiments"]] == ["test_bench.py::test_generate"]
    properties = {
        p.get("name"): p.get("value") for p in ET.parse(project.path / "junit.xml").iter("property")
    }
    assert properties["llem_verdict"] in ("worse", "new")
    comment = (project.path / "comment.md").read_text()
    assert "**1 worse, 1 new**" in comment and "J/token" in comment
    # the worktree is gone and git knows nothing of it any more
    assert not list((project.path / ".llem" / "ab").glob("*/worktree"))
    worktrees = subprocess.run(
        ["git", "-C", str(project.path), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert len(worktrees.strip().splitlines()) == 1


def test_both_sides_share_every_core_but_the_lowest_with_one_thread_each() -> None:
    from pytest_llem.plugin.ab.worker import headroom_layer, shared_cores

    assert shared_cores({0, 1}) == {1} and shared_cores({0, 3, 5}) == {3, 5}
    assert shared_cores({2}) is None  # one core: nothing to leave free, nothing pinned
    assert headroom_layer({3, 5}) == {"num_threads": 2} and headroom_layer(None) == {}


@needs_git
def test_identical_code_is_never_worse_and_config_changes_are_shown(project: pytest.Pytester) -> None:
    project.makepyfile(test_old=BENCH)  # a test the pull request deletes: base-only, "missing"
    _git(project.path, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(project.path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "old test")
    (project.path / "test_old.py").unlink()
    project.makepyfile(test_bench=BENCH.replace('"n_warmup": 2', '"n_warmup": 3'))  # a config change
    before = os.sched_getaffinity(0)
    result = _ab(project)
    assert os.sched_getaffinity(0) == before  # A/B pinned this process while it ran, no longer
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*llem gate: 1 unchanged, 1 missing*"])
    report = _report(project)
    # the JSON report carries the same headline and the base-only test as the table
    assert report["gate"]["mode"] == "ab" and report["gate"]["reference"] == "HEAD"
    assert report["gate"]["headline"] == "1 unchanged, 1 missing"
    assert report["gate"]["missing"] == ["test_old.py::test_generate"]
    comparison = report["experiments"][0]["comparison"]
    assert comparison["verdict"] == "unchanged"  # exact on the simulated clock
    assert comparison["config_changes"] == ["warmup.n_warmup: 3 -> 2"] or comparison["config_changes"] == [
        "warmup.n_warmup: 2 -> 3"
    ]
    assert comparison["window_order"] == "ABBAABBAABBA"


@needs_git
def test_an_environment_inside_the_repository_is_shared_by_both_sides(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a `.venv` in the project root: untracked, on the path, absent from the worktree.
    The base keeps using it (a path remapped into the worktree would not exist there)."""
    site = project.path / ".venv-like" / "site-packages"
    site.mkdir(parents=True)
    (site / "helperlib.py").write_text("ANSWER = 42\n")
    (project.path / ".gitignore").write_text(".venv-like/\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ["PYTHONPATH"]]))
    monkeypatch.syspath_prepend(str(site))  # the head runs in this process
    project.makepyfile(test_bench="import helperlib\n" + BENCH)
    _commit(project, "uses an installed helper")
    result = _ab(project)
    result.assert_outcomes(passed=1)
    comparison = _report(project)["experiments"][0]["comparison"]
    assert comparison["verdict"] == "unchanged" and "base_isolation_leaks" not in comparison


EDITABLE_CONFTEST = """
import site
site.addsitedir({site!r})  # where pip put the editable install: its .pth runs setuptools' hook

from edpkg import model
from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, simulated_gpus

def pytest_configure(config):
    workload = SimulatedWorkload(seconds_per_token=model.SECONDS_PER_TOKEN, prefill_seconds_per_token=0.0)
    simulation = simulated_gpus([SimulatedGpu(power_w=200.0, counter_period_s=0.0)], workload)
    simulation.__enter__()
    config.add_cleanup(lambda: simulation.__exit__(None, None, None))
"""


@needs_git
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools to build")
def test_a_package_pip_installed_in_editable_mode_is_the_bases_own_code_on_the_base(
    pytester: pytest.Pytester,
) -> None:
    """The real mechanism, not a path: pip installs the project's package in editable mode
    (a flat layout, for which setuptools installs an import hook that maps `edpkg` to the
    head's tree), and the pull request makes its model 4x slower. Were the head's code to leak
    into the base, both sides would run the slow model and the ratio would be 1."""
    package = pytester.path / "edpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("SECONDS_PER_TOKEN = 0.002\n")
    (pytester.path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "edpkg"\nversion = "0"\n[tool.setuptools]\npackages = ["edpkg"]\n'
    )
    prefix = pytester.path.parent / "prefix"  # outside the repository, like site-packages
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    installed = subprocess.run(
        [*pip, "--prefix", str(prefix), "-e", str(pytester.path)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    (site_dir,) = prefix.glob("lib/python*/site-packages")
    assert list(site_dir.glob("__editable__*edpkg*finder.py"))  # setuptools' import hook
    tests = pytester.path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(EDITABLE_CONFTEST.format(site=str(site_dir)))
    (tests / "test_bench.py").write_text(BENCH)
    (pytester.path / ".gitignore").write_text("*.egg-info/\n.llem/\n")
    _git(pytester.path, "init", "-q")
    _commit(pytester, "base")
    (package / "model.py").write_text("SECONDS_PER_TOKEN = 0.008\n")  # the pull request
    # a plain subprocess: pytester's would put the project on PYTHONPATH, which A/B maps into
    # the worktree anyway; here only the import hook knows where `edpkg` is
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llem-ab=HEAD"]
    done = subprocess.run(
        [*command, "--llem-json=head.json", "tests"], cwd=pytester.path, env=env, capture_output=True
    )
    assert done.returncode == 1, done.stdout.decode(errors="replace")[-2000:]  # the test failed: worse
    comparison = _report(pytester)["experiments"][0]["comparison"]
    assert "base_isolation_leaks" not in comparison
    energy = next(m for m in comparison["metrics"] if m["metric"] == "energy_per_output_token_j")
    assert energy["verdict"] == "worse" and energy["ratio"] == pytest.approx(4.0)


@needs_git
def test_a_reference_that_is_not_a_commit_is_one_line_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("-p", "no:cacheprovider", "--llem-ab=no-such-branch")
    result.stderr.fnmatch_lines(["*--llem-ab no-such-branch: 'no-such-branch' is not a commit in *"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


class _Script:
    """A scripted base: replies to the head's sends from a fixed list, recording them."""

    def __init__(self, replies: Iterable[tuple[object, ...]]) -> None:
        self.replies = list(replies)
        self.sent: list[tuple[Any, ...]] = []

    def send(self, message: tuple[Any, ...]) -> None:
        self.sent.append(message)

    def recv(self) -> tuple[object, ...]:
        if not self.replies:
            raise EOFError
        return self.replies.pop(0)


def _ended(turns: HeadTurns) -> Exchange:
    """The exchange of the test that `end_test` ended."""
    exchange = turns.end_test()
    assert exchange is not None
    return exchange


def test_head_interleaves_abba_and_runs_extra_base_windows_alone() -> None:
    ready = [("ready", "measure", i, True) for i in range(3)]
    done = [("done", "measure", i, None) for i in range(3)]
    script = _Script(
        [
            ready[0],
            done[0],
            ready[1],
            done[1],
            ready[2],
            done[2],
            ("result", "{}"),
            ("finished", "t", "passed"),
        ]
    )
    turns = HeadTurns(script)
    turns.start_test("t", None)
    for index in range(2):  # the head has 2 windows, the base 3
        with turns.turn("measure", index):
            pass
    assert turns.base_result(0) == "{}"  # runs the base's third window alone on the way
    assert turns.take_order() == "ABBAA"
    assert _ended(turns).outcome == "passed"
    assert script.sent == [("run", "t", None, {}), ("go", 1), ("go", 1), ("go", 1)]


def test_the_head_tells_the_base_to_start_only_after_its_idle_baseline() -> None:
    """The base is blocked on its next command while the head takes the idle baseline, and
    gets the baseline with "run": nothing runs on the base side during it."""
    script = _Script(
        [("ready", "measure", 0, True), ("done", "measure", 0, None), ("finished", "t", "passed")]
    )
    turns = HeadTurns(script)
    turns.start_test("t", "u")
    assert script.sent == []  # pre-flight and the idle baseline come first
    baseline = Baseline(power_w=61.5, duration_s=30.0, measured_at=1.0, source="nvml")
    turns.share_baseline("host|nvml|0|s", baseline)
    with turns.turn("measure", 0):
        pass
    assert _ended(turns).outcome == "passed"
    assert script.sent == [("run", "t", "u", {"host|nvml|0|s": baseline}), ("go", 1)]


# a base that warms up once, measures one window and finishes its test
ONE_WARMUP_ONE_WINDOW = [
    ("ready", "warmup", 0, True),
    ("done", "warmup", 0, None),
    ("ready", "measure", 0, True),
    ("done", "measure", 0, None),
    ("finished", "t", "passed"),
]


class _Stages:
    """A session whose progress records the stages it is told."""

    def __init__(self) -> None:
        self.progress: Progress = self
        self.stages: list[tuple[str, int | None]] = []

    def update(
        self, stage: str, step: int | None = None, total: int | None = None, countdown_s: float | None = None
    ) -> None:
        self.stages.append((stage, step))


def test_the_head_shows_what_it_waits_for_and_then_its_own_stage() -> None:
    script = _Script(ONE_WARMUP_ONE_WINDOW)
    session = _Stages()
    turns = HeadTurns(script, session)
    turns.start_test("t", None)
    with turns.turn("warmup", 0):
        session.update("warmup", 1)  # what ExperimentSession does inside its turn
    with turns.turn("measure", 0):
        session.update("repeat", 1)
    turns.end_test()
    waiting = ("A/B: waiting for the base", None)
    assert session.stages == [
        waiting,
        ("A/B: base warmup", 1),
        waiting,
        ("warmup", 1),
        ("A/B: base repeat", 1),
        waiting,
        ("repeat", 1),
    ]


def test_a_head_test_that_never_measures_still_runs_on_the_base() -> None:
    script = _Script([("finished", "t", "failed")])
    turns = HeadTurns(script)
    turns.start_test("t", None)
    assert _ended(turns).outcome == "failed"
    assert script.sent == [("run", "t", None, {})]


@needs_git
def test_the_base_reuses_the_idle_baseline_the_head_took_while_it_waited(project: pytest.Pytester) -> None:
    """An idle baseline must see both sides idle, so the head takes it before the base starts
    the test and the base reuses it. The pull request here changes the simulated board's power:
    a baseline the base took itself would read the base's 200 W, not the head's 120 W."""
    project.makepyfile(test_bench=BENCH.replace('"baseline_s": 0', '"baseline_s": 1'))
    _commit(project, "with an idle baseline")
    _write_model(project, 0.002, power_w=120.0)
    result = _ab(project)
    result.assert_outcomes(passed=1)
    head = _report(project)["experiments"][0]
    base = json.loads(Path(head["comparison"]["base_report"]).read_text())["experiments"][0]
    assert base["status"] == "passed"
    assert head["baseline_power_w"] == pytest.approx(120.0)
    assert base["baseline_power_w"] == pytest.approx(120.0)  # the head's, not 200 W


def test_a_base_that_dies_leaves_the_head_measuring_alone() -> None:
    turns = HeadTurns(_Script([]))
    turns.start_test("t", None)
    with turns.turn("measure", 0):
        pass
    assert turns.broken and turns.base_result(0) is None


def test_base_arguments_drop_the_heads_outputs_and_ab_itself() -> None:
    args = [
        "benchmarks/",
        "--llem-ab",
        "main",
        "--junitxml=j.xml",
        "--llem-save",
        "x",
        "-k",
        "gen",
        "--llem-autosave",
    ]
    assert base_arguments(args) == ["benchmarks/", "-k", "gen"]
    # under xdist each worker starts its own base, which is no xdist session itself
    xdist = ["-n", "2", "-n4", "-nauto", "--dist=loadgroup", "--dist", "load", "--numprocesses=3", "tests/"]
    assert base_arguments(xdist) == ["tests/"]


def test_base_sys_path_points_into_the_worktree(tmp_path: Path) -> None:
    head, worktree = tmp_path / "head", tmp_path / "head" / ".llem" / "ab" / "x" / "worktree"
    (worktree / "src").mkdir(parents=True)
    # a virtual environment inside the repository (untracked: the worktree has none) is the
    # environment both sides run on, not the head's code: it stays as it is
    site = str(head / ".venv" / "lib" / "python3.11" / "site-packages")
    entries = [str(head / "src"), "/usr/lib/python3", str(head), site]
    assert isolated_path(entries, head, worktree) == [
        str(worktree / "src"),
        str(worktree),
        "/usr/lib/python3",
        site,
    ]


def test_only_modules_of_the_heads_code_count_as_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head, worktree = tmp_path / "head", tmp_path / "head" / ".llem" / "ab" / "x" / "worktree"
    (worktree / "src" / "mypkg").mkdir(parents=True)
    tool = tmp_path / "tool"
    modules = {
        "mypkg.model": head / "src" / "mypkg" / "model.py",  # the head's code: a leak
        "mypkg.base": worktree / "src" / "mypkg" / "model.py",  # the base's own code
        "numpy_like": head / ".venv" / "lib" / "site-packages" / "numpy_like.py",  # environment
        "tool_module": tool / "plugin.py",  # the instrument itself
    }
    for name, file in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(__file__=str(file)))
    assert leaked_modules(head, worktree, tool) == ["mypkg.model"]


@needs_git
def test_a_base_that_cannot_start_stops_the_session_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(conftest="raise RuntimeError('the base revision is broken')\n", test_bench=BENCH)
    _git(pytester.path, "init", "-q")
    _git(pytester.path, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(pytester.path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    pytester.makepyfile(conftest="", test_bench="def test_fine():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--llem-ab=HEAD")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        ["*--llem-ab HEAD: the base worker exited with code *(full log: *worker.log)*"]
    )
    assert not list((pytester.path / ".llem" / "ab").glob("*/worktree"))


def test_llem_ab_command_runs_pytest_with_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_llem.cli.commands as cli

    calls: list[list[str]] = []

    def call(command: list[str]) -> int:
        calls.append(command)
        return 0

    monkeypatch.setattr("subprocess.call", call)
    assert cli.main(["ab", "origin/main", "--", "pytest", "benchmarks/", "-q"]) == 0
    assert calls[0][1:] == ["-m", "pytest", "benchmarks/", "-q", "--llem-ab=origin/main"]


def test_extra_base_warmup_runs_alone_before_the_paired_windows() -> None:
    script = _Script(ONE_WARMUP_ONE_WINDOW)
    turns = HeadTurns(script)
    turns.start_test("t", None)
    with turns.turn("measure", 0):  # the head has no warmup at all
        pass
    assert turns.take_order() == "AB"  # the base's warmup ran alone and is not a window
    assert _ended(turns).outcome == "passed"
    assert script.sent == [("run", "t", None, {}), ("go", None), ("go", 1)]


def _window(tokens_per_second: float) -> RepeatResult:
    return RepeatResult(
        index=0,
        window_s=1.0,
        output_tokens=10,
        input_tokens=0,
        energy_j=None,
        tokens_per_second=tokens_per_second,
        energy_per_output_token_j=None,
    )


def test_the_head_adds_pairs_until_the_judge_settles_then_the_base_skips_its_next_window() -> None:
    from pytest_llem.gate.sequential import PairPlan

    window = _window(100.0).model_dump(mode="json")
    replies: list[tuple[object, ...]] = []
    for index in range(4):
        replies += [("ready", "measure", index, index < 2), ("done", "measure", index, window)]
    replies += [("ready", "measure", 4, False), ("result", "{}"), ("finished", "t", "passed")]
    script = _Script(replies)
    seen: list[tuple[int, int]] = []

    def judge(base: Sequence[dict[str, Any]], head: Sequence[dict[str, Any]]) -> tuple[list[Verdict], str]:
        seen.append((len(base), len(head)))
        return (["unchanged"] if len(head) >= 4 else ["inconclusive"]), "tokens_per_second +0.0%"

    turns = HeadTurns(script, judge=judge, plan=PairPlan(0, 10, 300.0))
    turns.start_test("t", None)
    index = 0
    while True:
        with turns.turn("measure", index, passes=3) as grant:
            assert grant.run and grant.passes == 3
            grant.taken = _window(101.0)
        index += 1
        if not turns.another_window(index, 2):  # the experiment's repeats: 2, the minimum
            break
    assert index == 4 and seen == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert turns.take_stop() == (4, "settled")
    assert turns.base_result(0) == "{}"
    assert turns.take_order() == "ABBAABBA"
    # every base window got the head's calibrated passes; the fifth was skipped, not run alone
    assert script.sent == [("run", "t", None, {}), *[("go", 3)] * 4, ("skip",)]


def test_the_head_stops_at_its_repeats_when_the_base_has_no_window_beside_its_own() -> None:
    from pytest_llem.gate.sequential import PairPlan

    script = _Script([("finished", "t", "failed")])  # the base test failed before measuring
    turns = HeadTurns(script, judge=lambda b, h: (["inconclusive"], ""), plan=PairPlan(0, 10, 300.0))
    turns.start_test("t", None)
    for index in range(3):
        with turns.turn("measure", index) as grant:
            grant.taken = _window(100.0)
        if not turns.another_window(index + 1, 3):
            break
    assert index == 2 and turns.take_stop() == (0, "base ended")


def test_the_base_uses_the_heads_passes_and_stops_when_told_to_skip() -> None:
    from pytest_llem.plugin.ab.protocol import BaseTurns

    script = _Script([("go", 5), ("skip",)])
    turns = BaseTurns(script)
    with turns.turn("measure", 0, passes=1) as grant:
        assert grant.run and grant.passes == 5
        grant.taken = _window(99.0)
    assert turns.another_window(1, 3)  # the head decides; the base always asks
    with turns.turn("measure", 1, passes=1) as grant:
        assert not grant.run
    assert script.sent[0] == ("ready", "measure", 0, True)
    assert script.sent[1][:3] == ("done", "measure", 0) and script.sent[1][3]["tokens_per_second"] == 99.0
    assert script.sent[2] == ("ready", "measure", 1, True)  # 1 window of its own 3 repeats: it wants more


NOISY_CONFTEST = """
import os
from mypkg import model
from pytest_llem.testing import SimulatedGpu, SimulatedWorkload, simulated_gpus

def pytest_configure(config):
    # a noisy machine, reproducibly: base and head draw from different seeded generators
    seed = 1 if os.environ.get("PYTEST_LLEM_AB_ROLE") == "base" else 2
    workload = SimulatedWorkload(seconds_per_token=model.SECONDS_PER_TOKEN, prefill_seconds_per_token=0.0,
                                 jitter=0.03, jitter_seed=seed)
    simulation = simulated_gpus([SimulatedGpu(power_w=200.0, counter_period_s=0.0)], workload)
    simulation.__enter__()
    config.add_cleanup(lambda: simulation.__exit__(None, None, None))
"""


@needs_git
@pytest.mark.parametrize(
    ("seconds_per_token", "verdicts"), [(0.002, {"unchanged", "inconclusive"}), (0.008, {"worse"})]
)
def test_on_a_noisy_machine_pairs_are_added_until_settled_or_the_most_pairs(
    project: pytest.Pytester, seconds_per_token: float, verdicts: set[str]
) -> None:
    project.makepyfile(conftest=NOISY_CONFTEST, test_bench=BENCH.replace("repeats=6", "repeats=3"))
    _commit(project, "a noisy machine")
    _write_model(project, seconds_per_token)
    result = _ab(project, "--llem-ab-max-pairs=14", "--llem-markdown=comment.md")
    assert "Traceback" not in result.stdout.str()
    comparison = _report(project)["experiments"][0]["comparison"]
    assert comparison["verdict"] in verdicts
    pairs, why = comparison["pairs_taken"], comparison["stopped_because"]
    assert 3 < pairs <= 14 and why in ("settled", "max pairs")  # more than the 3 repeats: noise
    assert (why == "settled") == (comparison["verdict"] != "inconclusive")
    assert comparison["window_order"] == "ABBA" * (pairs // 2) + "AB" * (pairs % 2)
    assert all(m["n_pairs"] == pairs for m in comparison["metrics"])
    properties = {
        p.get("name"): p.get("value") for p in ET.parse(project.path / "junit.xml").iter("property")
    }
    assert properties["llem_pairs"] == str(pairs) and properties["llem_stopped_because"] == why
    assert f"after {pairs} pairs" in (project.path / "comment.md").read_text()


@needs_git
def test_under_xdist_each_worker_pairs_its_tests_with_its_own_base_on_its_own_slot(
    project: pytest.Pytester,
) -> None:
    pytest.importorskip("xdist")
    two_gpus = CONFTEST.replace(
        "[SimulatedGpu(power_w=power_w, counter_period_s=0.0)]",
        "[SimulatedGpu(power_w=power_w, counter_period_s=0.0)] * 2",
    )
    project.makepyfile(conftest=two_gpus, test_other=BENCH.replace("test_generate", "test_other"))
    _commit(project, "two tests, two GPUs")
    _write_model(project, 0.008)  # the pull request: 4x the work
    result = project.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "--llem-ab=HEAD",
        "--llem-json=head.json",
        "--llem-markdown=comment.md",
        "-n",
        "2",
        "--llem-gpus-per-worker",
        "1",
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*llem gate: 2 worse*"])
    report = _report(project)
    commit = subprocess.run(
        ["git", "-C", str(project.path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert report["gate"]["mode"] == "ab" and report["gate"]["base_commit"] == commit
    assert report["gate"]["headline"] == "2 worse" and report["gate"]["missing"] == []
    for experiment in report["experiments"]:
        comparison = experiment["comparison"]
        assert comparison["verdict"] == "worse" and comparison["window_order"].startswith("ABBA")
        # the base ran on the head's slot: its one visible board is the head's, by UUID
        uuid = experiment["slot"]["cuda_visible_devices"]
        assert experiment["slot"]["gpu_uuids"] == [uuid]
        base = json.loads(Path(comparison["base_report"]).read_text())
        assert [gpu["uuid"] for gpu in base["environment"]["gpus"]] == [uuid]
        assert [e["nodeid"] for e in base["experiments"]] == [experiment["nodeid"]]
    slots = {e["slot"]["cuda_visible_devices"] for e in report["experiments"]}
    assert slots <= {"GPU-00000000-0000-0000-0000-000000000000", "GPU-00000000-0000-0000-0000-000000000001"}
    assert "**2 worse**" in (project.path / "comment.md").read_text()
    assert not list((project.path / ".llem" / "ab").glob("*/worktree"))  # every worker's is gone


@needs_git
def test_a_checkout_left_by_a_dead_session_is_swept_and_a_live_ones_is_kept(
    pytester: pytest.Pytester,
) -> None:
    from pytest_llem.plugin.ab.worktree import create, remove_stale

    pytester.makepyfile(test_x="def test_x(): pass")
    _git(pytester.path, "init", "-q")
    _commit(pytester, "base")
    tool_dir = pytester.path / ".llem"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names a session that is gone
    live = create(pytester.path, "HEAD", tool_dir)  # made by this (live) process
    stale_path = live.path.parent.parent / f"{live.commit[:12]}-{dead.pid}" / "worktree"
    _git(pytester.path, "worktree", "add", "--detach", str(stale_path), "HEAD")
    assert remove_stale(pytester.path, tool_dir) == [stale_path]
    assert not stale_path.parent.exists() and live.path.is_dir()
    listed = subprocess.run(
        ["git", "-C", str(pytester.path), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert str(stale_path) not in listed and str(live.path) in listed
    live.remove()
