"""Stored runs: names that cannot escape, directories that are never shared or replaced,
reports that say whether their session completed, files that follow the umask, and a
report that cannot be written never loses a result."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pytest_llem.schema.environment import EnvironmentSnapshot
from pytest_llem.schema.results import SessionReport
from pytest_llem.store.report import REPORT_NAME, new_report, read_report, write_report, write_report_or_keep
from pytest_llem.store.runs import RunStore, SessionRun, check_run_name

pytest_plugins = ["pytester"]

FAST = ["--llem-baseline-s=0", "--llem-warmup=1", "--llem-repeats=1", "-p", "no:cacheprovider"]
TINY_TEST = """
import pytest

@pytest.mark.llem(model="tiny", max_new_tokens=2, n_prompts=1, energy={"meter": "estimate"})
def test_one(llem):
    llem.run()
"""
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _report(run_id: str = "r", name: str | None = None, completed: bool = True) -> SessionReport:
    environment = EnvironmentSnapshot(python="3", platform="linux", tool_version="0", git_commit="ab" * 20)
    report = new_report(environment, WHEN, "fp", run_id, name)
    report.completed = completed
    return report


@pytest.mark.parametrize(
    "name", ["../../x", "/tmp/abs", "", "a/b", "..", "a..b", ".hidden", "a\\b", "x" * 101]
)
def test_a_run_name_that_could_leave_the_runs_directory_is_refused_in_one_line(name: str) -> None:
    with pytest.raises(ValueError) as info:
        check_run_name("--llem-save", name)
    message = str(info.value)
    assert message.startswith(f"--llem-save={name!r}: ") and "e.g. --llem-save=main" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["main", "pr-12_v1.2", "base0"])
def test_ordinary_run_names_are_accepted(name: str) -> None:
    check_run_name("--llem-save", name)


def test_sessions_started_in_the_same_second_get_distinct_directories_created_exclusively(
    tmp_path: Path,
) -> None:
    store = RunStore(tmp_path / ".llem")
    created = [store.create_run_dir("c" * 40, False, WHEN) for _ in range(50)]
    assert len({p.name for p in created}) == 50 and all(p.is_dir() for p in created)
    assert all(p.parent == store.runs_dir for p in created)
    host_pid = created[0].name.split("_")[2]
    assert created[0].name.startswith("20260102T030405Z_cccccccc_") and str(os.getpid()) in host_pid


def test_a_taken_name_is_never_replaced_and_the_name_means_its_newest_complete_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path / ".llem")
    first = store.create_run_dir(None, None, WHEN, "base")
    (first / "keep.txt").write_text("older run")
    second = store.create_run_dir(None, None, WHEN, "base")
    third = store.create_run_dir(None, None, WHEN, "base")
    assert [first.name, second.name, third.name] == ["base", "base.2", "base.3"]
    assert (first / "keep.txt").read_text() == "older run"
    for path, created, completed in (
        (first, "2026-01-01", True),
        (second, "2026-01-02", True),
        (third, "2026-01-03", False),
    ):
        report = _report(path.name, "base", completed)
        report.created_at = f"{created}T00:00:00+00:00"
        write_report(report, path / REPORT_NAME)
    assert store.resolve("base") == second / REPORT_NAME  # the interrupted base.3 is not a baseline
    assert store.resolve("base", exclude=second) == first / REPORT_NAME
    assert store.resolve("abababab") == second / REPORT_NAME  # by commit
    assert store.resolve("base.3") == third / REPORT_NAME  # named explicitly


def test_a_run_directory_that_cannot_be_created_is_one_error_naming_the_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(OSError, match=f"cannot create the runs directory {not_a_dir}/runs: .*--llem-dir"):
        RunStore(not_a_dir).create_run_dir(None, None, WHEN)


def test_an_empty_run_directory_is_released_but_nothing_else_is_ever_removed(tmp_path: Path) -> None:
    store = RunStore(tmp_path / ".llem")
    run = SessionRun(store)
    empty = run.ensure(WHEN)
    run.release_if_empty()
    assert not empty.exists()
    run = SessionRun(store, name="kept")
    kept = run.ensure(WHEN)
    (kept / "x").write_text("measured")
    run.release_if_empty()
    assert (kept / "x").exists()
    other = SessionRun.existing(store.create_run_dir(None, None, WHEN), tmp_path / "r.json", store)
    other.release_if_empty()  # not created by this session: left alone
    assert other.created_dir is not None and other.created_dir.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_report_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        report = _report()
        report.experiments = []
        write_report(report, tmp_path / "r" / REPORT_NAME)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "r" / REPORT_NAME).stat().st_mode) == 0o666 & ~umask


def test_a_report_that_cannot_be_written_keeps_every_result_in_a_named_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    blocked = tmp_path / "file"
    blocked.write_text("")
    error = write_report_or_keep(_report("r1"), blocked / REPORT_NAME)
    assert error is not None and "\n" not in error
    kept = Path(error.rsplit("kept in ", 1)[1])
    assert error.startswith(f"pytest-llem cannot write the report {blocked / REPORT_NAME} (")
    assert read_report(kept).run_id == "r1"


def test_bad_run_names_and_llem_dirs_are_usage_errors_and_nothing_outside_is_touched(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(TINY_TEST)
    outside = pytester.path.parent / f"{pytester.path.name}-outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    for name in ("../../x", str(outside), f"../{outside.name}", ""):
        result = pytester.runpytest(f"--llem-save={name}", *FAST)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, name
        lines = [line for line in result.stderr.lines if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"ERROR: --llem-save={name!r}: ")
    assert (outside / "precious").read_text() == "keep" and not (pytester.path / ".llem").exists()

    (pytester.path / "afile").write_text("")
    result = pytester.runpytest("--llem-dir=afile", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: cannot create the runs directory {pytester.path}/afile/runs: *--llem-dir*"]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_session_records_completion_and_a_saved_name_never_replaces_a_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(TINY_TEST)
    pytester.runpytest("--llem-save=base", *FAST).assert_outcomes(passed=1)
    pytester.runpytest("--llem-save=base", *FAST).assert_outcomes(passed=1)
    pytester.makepyfile(test_plain="def test_plain(): pass")
    pytester.runpytest("test_plain.py", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    runs = sorted(p.name for p in (pytester.path / ".llem" / "runs").iterdir())
    assert runs == ["base", "base.2"]  # a session without experiments leaves nothing behind
    umask = os.umask(0)
    os.umask(umask)
    for run in runs:
        report = read_report(pytester.path / ".llem" / "runs" / run)
        assert report.completed is True and report.name == "base" and report.run_id == run
        for name in (REPORT_NAME, "experiments.parquet"):
            mode = stat.S_IMODE((pytester.path / ".llem" / "runs" / run / name).stat().st_mode)
            assert mode == 0o666 & ~umask  # the user's umask, not mkstemp's 0600


def test_a_mid_session_write_failure_is_one_error_and_every_result_is_kept(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(pytester.path))
    pytester.makepyfile(
        TINY_TEST
        + """
def test_break_the_store():
    import glob, shutil
    (run_dir,) = glob.glob(".llem/runs/*")
    shutil.rmtree(run_dir)
    open(run_dir, "w").close()  # the run directory is now a file: nothing can be written

@pytest.mark.llem(model="tiny", max_new_tokens=2, n_prompts=1, energy={"meter": "estimate"})
def test_two(llem):
    llem.run()
"""
    )
    result = pytester.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the lost report fails the session
    result.assert_outcomes(passed=3)
    output = result.stdout.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output
    errors = [line for line in result.stdout.lines if line.startswith("ERROR: pytest-llem cannot write")]
    assert errors and len(set(errors)) == 1
    kept = Path(errors[0].rsplit("kept in ", 1)[1])
    assert [e.nodeid.split("::")[1] for e in read_report(kept).experiments] == ["test_one", "test_two"]


def test_an_interrupted_session_is_recorded_as_not_completed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        TINY_TEST
        + """
def test_interrupt():
    raise KeyboardInterrupt
"""
    )
    result = pytester.runpytest_subprocess(*FAST)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    (report_path,) = (pytester.path / ".llem" / "runs").glob(f"*/{REPORT_NAME}")
    assert json.loads(report_path.read_text())["completed"] is False


CONCURRENT_CONFTEST = """
from datetime import datetime, timezone

import pytest_llem.store.runs
from pytest_llem.testing import simulated_gpus

# every session believes it started in the same second: only the name's other parts differ
pytest_llem.store.runs.utc_now = lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SIMULATION = simulated_gpus([])  # binds the `simulated` engine for the whole session
SIMULATION.__enter__()
"""
CONCURRENT_TESTS = """
import pytest

SETTINGS = dict(model="sim", engine="simulated", device="cpu", max_new_tokens=2, n_prompts=1,
                num_threads=1, energy={"meter": "estimate", "baseline_s": 0}, warmup=0, repeats=1)

@pytest.mark.parametrize("k", range(3))
@pytest.mark.llem(**SETTINGS)
def test_experiment(llem, k):
    llem.run()
"""


def test_six_pairs_of_sessions_started_together_lose_no_experiment(pytester: pytest.Pytester) -> None:
    """12 sessions (the simulated engine: no model to load), started at once and all stamped
    with the same second, on one --llem-dir; in each pair one saves under a name."""
    pytester.makeconftest(CONCURRENT_CONFTEST)
    pytester.makepyfile(test_concurrent=CONCURRENT_TESTS)
    store = pytester.path / "shared-store"
    sessions = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--llem-dir={store}"]
            + ([f"--llem-save=pair{i // 2}"] if i % 2 else []),
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(12)
    ]
    outputs = [session.communicate(timeout=600)[0].decode() for session in sessions]
    assert all(session.returncode == 0 for session in sessions), outputs
    reports = [read_report(path) for path in (store / "runs").glob(f"*/{REPORT_NAME}")]
    assert len(reports) == 12 and len({r.run_id for r in reports}) == 12
    assert sum(len(r.experiments) for r in reports) == 36
    assert all(r.completed and len(r.experiments) == 3 for r in reports)
    assert sorted(r.name for r in reports if r.name) == [f"pair{i}" for i in range(6)]
