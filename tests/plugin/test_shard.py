"""Shards: `--llem-shard I/N` (or a Slurm job array's task) runs a deterministic share of the
collected tests; every test lands in exactly one shard; the report records the shard and
`llem merge` names a missing one."""

from __future__ import annotations

import json

import pytest

from pytest_llem.cli import main
from pytest_llem.plugin.shard import Shard, balanced_shards, resolve_shard

pytest_plugins = ["pytester"]

SUITE = "\n".join(f"def test_{name}():\n    pass\n" for name in "abcdefg")


def _selected(pytester: pytest.Pytester, *args: str) -> set[str]:
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", *args)
    assert result.ret == 0, result.stdout.str()
    return {line for line in result.outlines if "::test_" in line}


def test_the_shards_split_the_tests_exactly_once_each(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_many=SUITE)
    everything = _selected(pytester)
    shards = [_selected(pytester, f"--llem-shard={index}/3") for index in (1, 2, 3)]
    assert set.union(*shards) == everything and sum(len(shard) for shard in shards) == len(everything) == 7
    assert sorted(len(shard) for shard in shards) == [2, 2, 3]  # balanced by count
    assert _selected(pytester, "--llem-shard=2/3") == shards[1]  # the same share every time


def test_a_slurm_array_task_picks_its_shard_by_itself(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_many=SUITE)
    expected = _selected(pytester, "--llem-shard=2/3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "11")  # --array=10-12
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert _selected(pytester) == expected
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only")
    result.stdout.fnmatch_lines(["llem shard: 2/3 (from SLURM_ARRAY_TASK_ID), by test id"])


def test_indexed_jobs_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_shard("auto/4", {"JOB_COMPLETION_INDEX": "0"}) == Shard(1, 4, "JOB_COMPLETION_INDEX")
    assert resolve_shard("auto/4", {"SLURM_ARRAY_TASK_ID": "3"}) == Shard(4, 4, "SLURM_ARRAY_TASK_ID")
    assert resolve_shard(None, {}) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3/2", "shard 3/2 is invalid: expected I/N with 1 <= I <= N"),
        ("0/2", "shard 0/2 is invalid"),
        ("half", "--llem-shard='half' is invalid: expected I/N"),
        ("auto/2", "neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set"),
    ],
)
def test_a_bad_shard_is_one_usage_error(pytester: pytest.Pytester, value: str, message: str) -> None:
    pytester.makepyfile(test_many=SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", f"--llem-shard={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


TINY = """
import pytest

@pytest.mark.parametrize("k", range(3))
@pytest.mark.llem(model="tiny", max_new_tokens=2, n_prompts=1, warmup=0, repeats=1,
                  energy={"meter": "estimate", "baseline_s": 0})
def test_experiment(llem, k):
    llem.run()
"""


def test_shards_record_themselves_and_merge_names_a_missing_one(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(test_tiny=TINY)
    for index in (1, 2):
        result = pytester.runpytest(
            "-p", "no:cacheprovider", f"--llem-shard={index}/2", f"--llem-json=s{index}.json"
        )
        result.assert_outcomes(passed=2 if index == 1 else 1)
    reports = [json.loads((pytester.path / f"s{index}.json").read_text()) for index in (1, 2)]
    assert [report["shard"] for report in reports] == ["1/2", "2/2"]
    merged = pytester.path / "merged.json"
    assert (
        main(["merge", str(pytester.path / "s1.json"), str(pytester.path / "s2.json"), "-o", str(merged)])
        == 0
    )
    ids = sorted(e["nodeid"] for e in json.loads(merged.read_text())["experiments"])
    assert ids == [f"test_tiny.py::test_experiment[{k}]" for k in range(3)]  # every test exactly once
    capsys.readouterr()
    assert main(["merge", str(pytester.path / "s1.json"), "-o", str(pytester.path / "half.json")]) == 2
    assert "cannot merge: shard 2/2 is missing" in capsys.readouterr().err


def test_balanced_shards_put_the_longest_test_first_where_the_least_time_is() -> None:
    durations = {"t::a": 60.0, "t::b": 20.0, "t::c": 20.0, "t::d": 20.0}
    shards = balanced_shards(sorted([*durations, "t::new"]), durations, 2)
    assert shards == {"t::a": 1, "t::b": 2, "t::c": 2, "t::d": 2, "t::new": 1}  # 80 s and 60 s
    assert balanced_shards(["t::x", "t::y", "t::z"], {}, 2) == {"t::x": 1, "t::y": 2, "t::z": 1}


def test_shards_are_balanced_by_the_durations_of_the_newest_unsharded_run(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(test_tiny=TINY)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    (stored,) = pytester.path.glob(".llem/runs/*/report.json")
    report = json.loads(stored.read_text())
    assert set(report["test_durations_s"]) == {f"test_tiny.py::test_experiment[{k}]" for k in range(3)}
    # the durations that run measured, replaced by known ones: [1] is as long as the other two
    report["test_durations_s"] = {
        "test_tiny.py::test_experiment[0]": 5.0,
        "test_tiny.py::test_experiment[1]": 10.0,
        "test_tiny.py::test_experiment[2]": 5.0,
    }
    stored.write_text(json.dumps(report))
    assert _selected(pytester, "--llem-shard=1/2") == {"test_tiny.py::test_experiment[1]"}
    assert _selected(pytester, "--llem-shard=2/2") == {
        "test_tiny.py::test_experiment[0]",
        "test_tiny.py::test_experiment[2]",
    }
    result = pytester.runpytest("-p", "no:cacheprovider", "--llem-shard=1/2", "--llem-json=s1.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llem shard: 1/2 (from --llem-shard=1/2), balanced by earlier durations"])
    shard = json.loads((pytester.path / "s1.json").read_text())
    assert shard["shard_balanced_by"] == str(stored.parent)
    # a shard balanced by another report is named when the shards are merged
    other = pytester.runpytest(
        "-p", "no:cacheprovider", "--llem-shard=2/2", "--llem-json=s2.json", "--llem-shard-durations=s1.json"
    )
    # s1.json knows test [1] only; the others count as its median, so [1] lands in shard 2 too
    other.assert_outcomes(passed=1)
    capsys.readouterr()
    assert main(["merge", "s1.json", "s2.json", "-o", "merged.json"]) == 2
    err = capsys.readouterr().err
    assert "the shards were balanced by different earlier reports" in err
    assert "cannot merge: test id 'test_tiny.py::test_experiment[1]' is in s1.json and s2.json" in err
