"""The README's "Testing without hardware" example, run as written: it writes its timeseries
under `output_dir` and its 30 s idle baseline passes in simulated time, not real time."""

import re
import time
from pathlib import Path

import pyarrow.parquet as pq

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    section = README.read_text().split("## Testing without hardware", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section has no python example"
    return match.group(1)


def test_the_readme_simulation_example_writes_its_timeseries_without_waiting(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    started = time.process_time()
    exec(compile(_example(), str(README), "exec"), namespace)
    result = namespace["result"]
    assert result.status == "passed", result.error
    assert result.baseline_power_w == 120.0  # the idle baseline ran, at the trace's first level
    table = pq.read_table(tmp_path / "sim-run" / result.timeseries_path)
    assert table.num_rows >= 2 and set(table.column("gpu_index").to_pylist()) == {0}
    assert namespace["sim"].clock.now() > 30.0  # simulated seconds
    # CPU time, not wall time (immune to a busy machine): far below the 30 s it simulates
    assert time.process_time() - started < 20.0
    assert "simulated time:" in capsys.readouterr().out
