"""Experiments under pytest-xdist: each worker on a slot of its own (GPUs, cores), one report.

The sessions run as users run them: `pytest -n 2` in a subprocess, real xdist workers, the
tiny model on CPU, and simulated GPUs (LLEM_SIMULATED_GPUS) on a simulated clock
(LLEM_SIMULATED_CLOCK), so every energy figure is exact and comparable with the -n 0 run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pytest_llem.hardware.slots import Slot, plan_slots, visible_gpus
from pytest_llem.plugin.ledger import LEDGER_DIR, WorkerLedger, crashed_experiment
from pytest_llem.plugin.slots import slot_problem
from pytest_llem.schema.config import ExperimentConfig

pytest_plugins = ["pytester"]
pytest.importorskip("xdist")

FAST = ["--llem-baseline-s=0", "--llem-warmup=1", "--llem-repeats=2", "--llem-min-window-s=0"]
PLAIN = ["-p", "no:cacheprovider", "-p", "no:randomly"]

CPU_SUITE = """
import pytest

@pytest.mark.llem(model="tiny", max_new_tokens=6, n_prompts=3)
@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_tiny(llem, batch_size):
    assert llem.run(batch_size=batch_size).status == "passed"

def test_plain():
    pass
"""

GPU_SUITE = """
import pytest

SETTINGS = dict(engine="simulated", model="sim", n_prompts=4, max_new_tokens=64, repeats=2,
                warmup={"n_warmup": 1, "thermal_floor_s": 0}, energy={"meter": "nvml", "baseline_s": 0})

@pytest.mark.llem(**SETTINGS)
@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_gpu(llem, device, batch_size):
    assert llem.run(device=device, batch_size=batch_size).status == "passed"

@pytest.mark.llem(**SETTINGS)
def test_too_big_for_a_slot(llem):
    llem.run(device="cuda:2")
"""

# each process says which simulated boards it queried, once its session ends
NVML_CALLS_CONFTEST = """
import json, os

def pytest_sessionfinish(session):
    import pynvml
    # the controller may inherit PYTEST_XDIST_WORKER from an outer xdist run: ask xdist's input
    worker = getattr(session.config, "workerinput", {}).get("workerid", "controller")
    boards = sorted({index for (_, index) in pynvml.calls})
    with open(f"nvml-{worker}.json", "w") as f:
        json.dump({"boards": boards, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
"""


def _newest_report(path: Path) -> dict[str, Any]:
    """The newest run's report.json, as JSON."""
    reports = sorted(path.glob(".llem/runs/*/report.json"), key=lambda p: p.stat().st_mtime)
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    return report


def _by_test(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {experiment["nodeid"]: experiment for experiment in report["experiments"]}


def test_two_workers_on_disjoint_cores_give_the_report_one_worker_gives(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=CPU_SUITE)
    alone = pytester.runpytest_subprocess(*PLAIN, *FAST)
    alone.assert_outcomes(passed=5)
    serial = _by_test(_newest_report(pytester.path))
    shutil.rmtree(pytester.path / ".llem")

    parallel = pytester.runpytest_subprocess(*PLAIN, *FAST, "-n", "2")
    parallel.assert_outcomes(passed=5)
    report = _newest_report(pytester.path)
    assert report["completed"] is True
    both = _by_test(report)
    assert sorted(both) == sorted(serial)  # the same test ids, once each, in one report
    for nodeid, experiment in both.items():
        assert experiment["status"] == serial[nodeid]["status"] == "passed"
        assert experiment["output_tokens"] == serial[nodeid]["output_tokens"] > 0
        assert serial[nodeid]["slot"] is None
        slot = experiment["slot"]
        assert slot["workers"] == 2 and slot["worker"] in ("gw0", "gw1")
        assert experiment["config"]["num_threads"] == len(slot["cores"]) >= 1
        assert 1 <= slot["concurrent_experiments"] <= 2
        if slot["concurrent_experiments"] > 1:  # the CPU estimate covers the node: it says so
            assert "shared_node" in [w["flag"] for w in experiment["warnings"]]
    cores = {e["slot"]["worker"]: set(e["slot"]["cores"]) for e in both.values()}
    if len(cores) == 2:
        assert not cores["gw0"] & cores["gw1"]  # disjoint
    ledgers = sorted(p.name for p in next(pytester.path.glob(".llem/runs/*")).joinpath(LEDGER_DIR).iterdir())
    assert set(ledgers) <= {"gw0.jsonl", "gw1.jsonl"} and ledgers


def test_simulated_gpus_two_per_worker_read_only_their_slot_and_match_the_serial_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLEM_SIMULATED_GPUS", "4")
    monkeypatch.setenv("LLEM_SIMULATED_CLOCK", "1")  # exact energy, comparable across runs
    pytester.makepyfile(test_gpus=GPU_SUITE)
    pytester.makeconftest(NVML_CALLS_CONFTEST)
    deselect = ["-k", "not too_big"]
    pytester.runpytest_subprocess(*PLAIN, *deselect).assert_outcomes(passed=4)
    serial = _by_test(_newest_report(pytester.path))
    shutil.rmtree(pytester.path / ".llem")

    result = pytester.runpytest_subprocess(*PLAIN, "-n", "2", "--llem-gpus-per-worker", "2")
    result.assert_outcomes(passed=4, failed=1)
    # a test that needs more GPUs than a slot is refused at pre-flight, naming the option
    result.stdout.fnmatch_lines(
        ["*device='cuda:2' needs 3 GPU(s); this xdist worker's slot has 2*raise --llem-gpus-per-worker to 3*"]
    )
    both = _by_test(_newest_report(pytester.path))
    assert both["test_gpus.py::test_too_big_for_a_slot"]["status"] == "error"
    uuid = "GPU-11111111-2222-3333-4444-{:012d}".format
    slots = {"gw0": [0, 1], "gw1": [2, 3]}
    for nodeid, expected in serial.items():
        experiment = both[nodeid]
        assert experiment["output_tokens"] == expected["output_tokens"]
        # per slot, the energy is the serial run's to the counter's millijoule (a continuous
        # counter on each process's own clock): no worker read another's board
        assert experiment["energy_j"] == pytest.approx(expected["energy_j"], abs=2e-3)
        assert expected["energy_j"] > 0
        assert experiment["energy"]["per_device_j"].keys() == expected["energy"]["per_device_j"].keys()
        slot = experiment["slot"]
        assert slot["gpu_indexes"] == slots[slot["worker"]]
        assert slot["gpu_uuids"] == [uuid(i) for i in slots[slot["worker"]]]
        assert slot["cuda_visible_devices"] == ",".join(uuid(i) for i in slots[slot["worker"]])
        assert "shared_node" not in [w["flag"] for w in experiment["warnings"]]  # NVML is per board
        # the timeseries names the board as the machine numbers it, beside the in-process index
        run_dir = next(pytester.path.glob(".llem/runs/*"))
        rows = pq.read_table(run_dir / experiment["timeseries_path"]).to_pylist()
        cuda_index = int(experiment["device"].split(":")[1])
        assert rows and {(r["gpu_index"], r["nvml_index"]) for r in rows} == {
            (cuda_index, slots[slot["worker"]][cuda_index])
        }
    for worker, boards in slots.items():
        calls = json.loads((pytester.path / f"nvml-{worker}.json").read_text())
        assert calls["boards"] == boards, worker  # every NVML device call stayed in the slot
        assert calls["cuda_visible_devices"] == ",".join(uuid(i) for i in boards)


KILL_SUITE = """
import os, signal
import pytest

@pytest.mark.llem(model="tiny", max_new_tokens=6, n_prompts=3)
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_tiny(llem, batch_size):
    assert llem.run(batch_size=batch_size).status == "passed"

@pytest.mark.llem(warmup={"n_warmup": 0}, repeats=1)
def test_killed(llem):
    llem.measure(lambda: os.kill(os.getpid(), signal.SIGKILL), output_tokens=1)  # inside its window
"""


@pytest.mark.parametrize("dist", ["load", "loadgroup"])
def test_a_worker_killed_mid_experiment_loses_nothing_that_finished(
    pytester: pytest.Pytester, dist: str
) -> None:
    pytester.makepyfile(test_kill=KILL_SUITE)
    result = pytester.runpytest_subprocess(*PLAIN, *FAST, "-n", "2", "--dist", dist)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*crashed while running*test_killed*"])
    report = _newest_report(pytester.path)
    assert report["completed"] is True
    experiments = _by_test(report)
    assert sorted(experiments) == [
        "test_kill.py::test_killed",
        "test_kill.py::test_tiny[1]",
        "test_kill.py::test_tiny[2]",
        "test_kill.py::test_tiny[3]",
    ]
    killed = experiments.pop("test_kill.py::test_killed")
    assert killed["status"] == "error" and "died before it ended" in killed["error"]
    assert killed["test_outcome"] == "failed: the worker crashed" and killed["slot"]["worker"] in (
        "gw0",
        "gw1",
    )
    assert all(e["status"] == "passed" and e["output_tokens"] > 0 for e in experiments.values())


def test_more_workers_than_cores_fails_each_experiment_with_the_fix(pytester: pytest.Pytester) -> None:
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    pytester.makepyfile(test_suite=CPU_SUITE)
    result = pytester.run("taskset", "-c", "0", *pytester._getpytestargs(), *PLAIN, *FAST, "-n", "2")
    result.assert_outcomes(passed=1, errors=4)
    result.stdout.fnmatch_lines(
        ["*2 workers need 2 cores; this process may use 1 (0): run with -n 1 or fewer, or -n auto*"]
    )


# -- the parts, without processes ------------------------------------------------------------


def test_slots_split_the_callers_devices_in_order() -> None:
    gpus = ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]
    plan = plan_slots(["gw0", "gw1"], 2, gpus, [0, 1, 2, 3, 4])
    assert [(s.gpus, s.cores) for s in plan] == [(("GPU-a", "GPU-b"), (0, 1)), (("GPU-c", "GPU-d"), (2, 3))]
    assert all(s.problem is None for s in plan)
    zero = plan_slots(["gw0", "gw1"], 0, gpus, [0, 1])  # CPU-only experiments: no GPU at all
    assert [s.gpus for s in zero] == [(), ()]
    untouched = plan_slots(["gw0", "gw1"], None, [], [0, 1])  # no GPUs and no option
    assert [s.gpus for s in untouched] == [None, None]


@pytest.mark.parametrize(
    ("workers", "per_worker", "gpus", "cores", "message"),
    [
        (3, None, [], [0, 1], "3 workers need 3 cores; this process may use 2 (0,1): run with -n 2"),
        (2, None, ["0", "1"], [0, 1], "needs --llem-gpus-per-worker N"),
        (
            2,
            2,
            ["0", "1", "2"],
            [0, 1],
            "--llem-gpus-per-worker=2 with 2 xdist workers needs 4 GPUs; 3 are visible (0,1,2)",
        ),
    ],
)
def test_a_slot_that_cannot_be_made_names_the_fix(
    workers: int, per_worker: int | None, gpus: list[str], cores: list[int], message: str
) -> None:
    plan = plan_slots([f"gw{k}" for k in range(workers)], per_worker, gpus, cores)
    assert all(slot.problem and message in slot.problem for slot in plan)
    assert all(slot.gpus is None and slot.cores == () for slot in plan)  # nothing is applied


def test_visible_gpus_are_the_callers_entries_up_to_the_first_invalid_one() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 0,GPU-x"}) == ["2", "0", "GPU-x"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,3"}) == ["1"]  # CUDA stops there too
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_a_tensor_parallel_size_larger_than_the_slot_is_refused() -> None:
    slot = Slot("gw0", 2, ("0", "1"), (0,))
    config = ExperimentConfig(engine="vllm", device="cuda:0", passthrough_kwargs={"tensor_parallel_size": 4})
    problem = slot_problem(slot, config)
    assert problem == (
        "device='cuda:0' with tensor_parallel_size=4 needs 4 GPU(s); this xdist worker's slot has 2 "
        "(--llem-gpus-per-worker=2): raise --llem-gpus-per-worker to 4"
    )
    assert slot_problem(slot, ExperimentConfig(device="cuda:1")) is None
    assert slot_problem(slot, ExperimentConfig(device="cuda:2")) is not None
    assert slot_problem(Slot("gw0", 2, (), (0,)), ExperimentConfig(device="cpu")) is None
    assert slot_problem(Slot("gw0", 2, None, (0,)), config) is None  # GPUs not split


def _write(path: Path, events: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_the_ledger_counts_overlapping_experiments_and_names_a_crashed_one(tmp_path: Path) -> None:
    ledger = WorkerLedger(tmp_path, "gw0")
    config = ExperimentConfig(model="tiny")
    directory = tmp_path / LEDGER_DIR
    entry = ledger.start("t.py::test_mine", config)
    # another worker: one experiment long before, one overlapping, one still running
    _write(
        directory / "gw1.jsonl",
        [
            {"event": "start", "t": entry.started - 100, "nodeid": "a"},
            {"event": "end", "t": entry.started - 90},
            {"event": "start", "t": entry.started - 1, "nodeid": "b"},
            {"event": "end", "t": entry.started + 0.0001},
            {"event": "start", "t": entry.started + 0.0002, "nodeid": "c"},
        ],
    )
    assert entry.overlaps() == 2  # b, then c: never two others at once
    _write(directory / "gw2.jsonl", [{"event": "start", "t": entry.started - 5, "nodeid": "d"}])
    assert entry.overlaps() == 3  # d ran beside b: three at one instant
    assert entry.ended is not None and entry.overlaps() == 3  # ends once
    assert crashed_experiment(tmp_path, "gw0", "t.py::test_mine", "killed") is None  # it ended

    ledger.start("t.py::test_killed", config)
    result = crashed_experiment(tmp_path, "gw0", "t.py::test_killed@llem-model-tiny", "worker 'gw0' crashed")
    assert result is not None and result.status == "error" and result.nodeid == "t.py::test_killed"
    assert result.config.model == "tiny" and "worker 'gw0' crashed" in (result.error or "")
    last = json.loads((directory / "gw0.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "end" and last["crashed"] is True  # it overlaps nothing later


GROUP_SUITE = """
import pytest

@pytest.mark.llem(model="tiny", max_new_tokens=6, n_prompts=3)
@pytest.mark.parametrize("batch_size", [1, 2])
def test_tiny(llem, batch_size):
    assert llem.run(batch_size=batch_size).status == "passed"

@pytest.mark.parametrize("k", range(4))
def test_plain(k):
    pass
"""


def test_under_loadgroup_one_models_tests_share_a_worker_and_keep_their_ids(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_group=GROUP_SUITE)
    result = pytester.runpytest_subprocess(*PLAIN, *FAST, "-n", "2", "--dist", "loadgroup")
    result.assert_outcomes(passed=6)
    report = _newest_report(pytester.path)
    experiments = _by_test(report)
    assert sorted(experiments) == ["test_group.py::test_tiny[1]", "test_group.py::test_tiny[2]"]  # no @group
    assert len({e["slot"]["worker"] for e in experiments.values()}) == 1  # the model is loaded once
    assert "test_group.py::test_plain[0]" in report["test_durations_s"]  # ids without the suffix too
    assert not any("@" in test for test in report["test_durations_s"])


def test_n_auto_is_one_worker_per_gpu_slot(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLEM_SIMULATED_GPUS", "4")
    monkeypatch.setenv("LLEM_SIMULATED_CLOCK", "1")
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    pytester.makepyfile(test_gpus=GPU_SUITE)
    result = pytester.runpytest_subprocess(
        *PLAIN, "-n", "auto", "--llem-gpus-per-worker", "2", "-k", "not too_big"
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["created: 2/2 workers"])  # 4 GPUs / 2 per worker
    workers = {e["slot"]["worker"] for e in _newest_report(pytester.path)["experiments"]}
    assert workers <= {"gw0", "gw1"}
