"""Data files: every error names the file, the line or row, and the fix; a file dataset is
identified by its content; dataset problems are found in pre-flight, before any model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import simulated_settings

from pytest_llem import ConfigError, ExperimentConfig
from pytest_llem.datasets import check_dataset, load_prompts

pytest_plugins = ["pytester"]


def _error(path: Path, prompt_column: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        check_dataset(str(path), prompt_column)
    message = str(info.value)
    assert message.startswith(f"dataset {str(path)!r}: "), message
    assert "\n" not in message
    return message


def test_bad_jsonl_line_2_is_reported_as_line_2(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "broken"\n{"prompt": "fine"}\n')
    message = _error(path)
    assert "line 2 is not valid JSON" in message and "fix or remove that line" in message


def test_blank_lines_keep_line_numbers_true_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n\n["not", "an", "object"]\n')
    assert (
        'line 4 is an array, not a JSON object; write one object per line, e.g. {"prompt": "..."}'
        in _error(path)
    )


def test_non_utf8_names_the_file_line_byte_offset_and_says_to_re_encode(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes("prompt\nfirst\ncaf\xe9 au lait\n".encode("latin-1"))
    message = _error(path)
    assert "line 3 is not valid UTF-8 (byte offset 16" in message
    assert "re-encode the file as UTF-8" in message


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt\nhello\n")
    assert load_prompts(str(path), 1, 0, None).texts == ["hello"]


def test_missing_named_column_lists_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "question": "q?"}\n{"id": 2, "question": "r?", "extra": 1}\n')
    message = _error(path, prompt_column="prompt")
    assert "prompt_column='prompt' is not a column; columns found: ['id', 'question', 'extra']" in message


def test_no_detectable_column_lists_the_columns_found_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,body\n1,hello\n")
    message = _error(path)
    assert "no prompt column found; columns found: ['id', 'body']" in message
    assert "name one with prompt_column=..." in message


def test_a_row_without_the_prompt_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"text": "c"}\n')
    assert "line 3 has no 'prompt' (its columns: ['text'])" in _error(path)
    path.write_text('{"prompt": "a"}\n{"prompt": ""}\n')
    assert "line 2: 'prompt' is empty; every row needs a prompt" in _error(path)
    path.write_text('{"prompt": "a"}\n{"prompt": {"nested": 1}}\n')
    assert "line 2: 'prompt' is {'nested': 1}, not text" in _error(path)


def test_csv_rows_name_their_physical_line(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('prompt,id\n"multi\nline",1\nsecond,2,surplus\n')
    message = _error(path)
    assert (
        "line 4 has more fields than the header ['prompt', 'id']; quote fields that contain commas" in message
    )
    path.write_text("prompt,id\nfirst,1\n,2\n")
    assert "line 3: 'prompt' is empty" in _error(path)


def test_parquet_errors_name_the_row_or_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": None}]), path)
    assert "row 2: 'text' is empty" in _error(path)
    pq.write_table(pa.Table.from_pylist([{"body": "a"}]), path)
    assert "columns found: ['body']" in _error(path)
    path.write_bytes(b"PAR1 this is not parquet")
    assert "is not a readable Parquet file" in _error(path)


def test_missing_empty_directory_and_unsupported_files(tmp_path: Path) -> None:
    assert "file not found; a relative path resolves against the test file's directory" in _error(
        tmp_path / "missing.jsonl"
    )
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert "holds no prompts; add at least one row" in _error(tmp_path / "empty.jsonl")
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory" in _error(tmp_path / "dir.csv")
    unknown_home = Path("~no-such-user-here/p.jsonl")
    assert "file not found" in _error(unknown_home)
    assert len(ExperimentConfig(num_threads=1, dataset=str(unknown_home)).config_hash()) == 16


def test_config_hash_identifies_a_file_dataset_by_content_not_path(tmp_path: Path) -> None:
    rows = "\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(3))
    first, second = tmp_path / "a" / "p.jsonl", tmp_path / "moved" / "checkout" / "p.jsonl"
    first.parent.mkdir()
    first.write_text(rows)
    second.parent.mkdir(parents=True)
    shutil.copy(first, second)

    def digest(path: Path) -> str:
        return ExperimentConfig(model="tiny", num_threads=1, dataset=str(path)).config_hash()

    assert digest(first) == digest(second)
    second.write_text(rows + '\n{"prompt": "one more"}')
    assert digest(first) != digest(second)


def test_dataset_problems_are_pre_flight_failures_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llem import ExperimentSession

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a"}\n{oops}\n')
    session = ExperimentSession()

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the dataset was checked")

    monkeypatch.setattr(session, "load_model", no_model)
    config = ExperimentConfig(model="tiny", dataset=str(bad), energy={"meter": "none", "baseline_s": 0})
    result = session.run(config)
    session.close()
    assert result.status == "error"
    assert result.error is not None and "pre-flight failed" in result.error and "line 2" in result.error


def test_relative_dataset_paths_resolve_against_the_test_file(pytester: pytest.Pytester) -> None:
    sub = pytester.mkdir("suite")
    (sub / "prompts.jsonl").write_text('{"prompt": "hello"}\n')
    (sub / "test_data.py").write_text(
        "from pathlib import Path\n"
        "import pytest\n\n"
        "HERE = Path(__file__).parent\n\n"
        "@pytest.mark.llem(dataset='prompts.jsonl')\n"
        "def test_marker(llem):\n"
        "    assert llem.config.dataset == str(HERE / 'prompts.jsonl')\n\n"
        "def test_run_override(llem):\n"
        "    assert llem.settings(dataset='prompts.jsonl').dataset == str(HERE / 'prompts.jsonl')\n"
        "    assert llem.settings(dataset='synthetic:4').dataset == 'synthetic:4'\n"
    )
    elsewhere = pytester.mkdir("elsewhere")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)
        result = pytester.runpytest(str(sub), "--llem-energy=none", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"k": "not a baseline"}', b'{"k": {"power_w": "NaN"}}', b"\xff\xfe"],
)
def test_a_corrupt_baseline_cache_is_ignored_with_a_warning_naming_the_file(
    tmp_path: Path, content: bytes
) -> None:
    import time
    import warnings

    from pytest_llem.measure.baseline import Baseline, BaselineCache

    path = tmp_path / "baseline.json"
    path.write_bytes(content)
    cache = BaselineCache(ttl_s=600, disk_path=path)
    with pytest.warns(RuntimeWarning, match=rf"baseline cache {path} .*; ignoring it"):
        assert cache.get("k") is None
    measured = Baseline(power_w=12.5, duration_s=2.0, measured_at=time.time(), source="estimate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # put() may read the corrupt file again
        cache.put("k", measured)
    assert BaselineCache(ttl_s=600, disk_path=path).get("k") == measured


def test_an_experiment_goes_on_past_a_corrupt_baseline_cache(tmp_path: Path) -> None:
    from pytest_llem import ExperimentSession, build_config
    from pytest_llem.testing import SimulatedGpu, simulated_gpus

    cache = tmp_path / "baseline.json"
    cache.write_text("{truncated")
    settings = simulated_settings(
        repeats=1,
        warmup={"n_warmup": 0, "thermal_floor_s": 0},
        energy={"meter": "nvml", "baseline_s": 0.2, "baseline_cache_path": str(cache)},
    )
    with (
        simulated_gpus([SimulatedGpu()]),
        pytest.warns(RuntimeWarning, match=f"baseline cache {cache} cannot be read"),
    ):
        result = ExperimentSession().run(build_config(("test", settings)), "t::x")
    assert result.status == "passed", result.error
    assert result.baseline_power_w is not None
    assert json.loads(cache.read_text())  # rewritten with the new measurement


def test_long_context_prompts_in_csv_are_read_whole(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "long.csv"
    long_prompt = "word " * 60_000  # 300 kB, beyond the csv module's default 128 KiB field limit
    path.write_text(f'prompt\n"{long_prompt}"\n')
    limit = csv.field_size_limit()
    assert load_prompts(str(path), 1, 0, None).texts == [long_prompt]
    assert csv.field_size_limit() == limit  # the module-wide setting is left as it was
