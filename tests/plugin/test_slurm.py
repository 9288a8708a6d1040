"""A real Slurm cluster runs a suite as a job array of shards, then a dependent merge job
joins them: every test exactly once. scripts/test-all starts a one-node cluster
(scripts/slurm-up) where it can; elsewhere this test skips, saying why."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = """
import pytest

@pytest.mark.parametrize("k", range(5))
@pytest.mark.llem(model="tiny", max_new_tokens=2, n_prompts=1, warmup=0, repeats=1, num_threads=1,
                  energy={"meter": "estimate", "baseline_s": 0})
def test_experiment(llem, k):
    llem.run()
"""


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "Slurm is not installed (scripts/test-all installs slurm-wlm and munge as root)"
    states = subprocess.run(
        ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30, check=False
    )
    if states.returncode != 0 or not any(
        s.startswith(("idle", "mix", "alloc")) for s in states.stdout.split()
    ):
        return f"no Slurm node is up (start one with scripts/slurm-up as root): {states.stderr.strip()[:200]}"
    return None


def test_a_job_array_of_shards_then_a_merge_job_gives_every_test_exactly_once(tmp_path: Path) -> None:
    problem = _cluster_problem()
    if problem is not None:
        pytest.skip(problem)
    (tmp_path / "test_suite.py").write_text(SUITE)
    bin_dir = Path(sys.executable).parent
    shard = (
        f"{sys.executable} -m pytest -p no:cacheprovider -p no:randomly test_suite.py "
        "--llem-json shard-${SLURM_ARRAY_TASK_ID}.json"  # the shard comes from the array task itself
    )
    array = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0-1",
            "--cpus-per-task=1",
            f"--chdir={tmp_path}",
            "--output=shard-%a.log",
            "--wrap",
            shard,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job = array.stdout.strip().split(";")[0]
    merge = f"{bin_dir / 'llem'} merge shard-0.json shard-1.json -o suite.json"
    subprocess.run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            f"--dependency=afterok:{job}",
            "--kill-on-invalid-dep=yes",
            f"--chdir={tmp_path}",
            "--output=merge.log",
            "--wrap",
            merge,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
    assert (tmp_path / "suite.json").is_file(), logs
    shards = [json.loads((tmp_path / f"shard-{index}.json").read_text()) for index in (0, 1)]
    assert [report["shard"] for report in shards] == ["1/2", "2/2"]
    ids = sorted(e["nodeid"] for e in json.loads((tmp_path / "suite.json").read_text())["experiments"])
    assert ids == [f"test_suite.py::test_experiment[{k}]" for k in range(5)], logs
    assert all(e["status"] == "passed" for report in shards for e in report["experiments"])
