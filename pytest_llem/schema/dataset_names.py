"""What a `dataset` setting names, and how a file dataset is identified.

`builtin` and `synthetic:N` are names; anything else is a file path. A file dataset is
identified by the sha256 of its bytes, not by its path, so the same prompts in a moved
checkout (or on another machine) keep the same config hash and stay comparable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

BUILTIN = "builtin"
SYNTHETIC_PREFIX = "synthetic:"
FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")
DATASET_FORMS = "'builtin', 'synthetic:N' (N tokens per prompt) or a path to a .jsonl, .csv or .parquet file"

_digests: dict[tuple[str, int, int, int], str] = {}


def is_file_dataset(dataset: str) -> bool:
    return dataset != BUILTIN and not dataset.startswith(SYNTHETIC_PREFIX)


def synthetic_length(dataset: str) -> int | None:
    """N of `synthetic:N`; None for any other dataset. Raises ValueError for a bad N."""
    if not dataset.startswith(SYNTHETIC_PREFIX):
        return None
    raw = dataset[len(SYNTHETIC_PREFIX) :]
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"synthetic length must be a positive integer, e.g. 'synthetic:128' (got {raw!r})")
    return int(raw)


def check_dataset_name(dataset: str) -> None:
    """Syntax only (no file access): raises ValueError naming the accepted forms."""
    if synthetic_length(dataset) is not None or dataset == BUILTIN:
        return
    suffix = Path(dataset).suffix.lower()
    if suffix not in FILE_SUFFIXES:
        kind = f"file type '{suffix}'" if suffix else "name (no file suffix)"
        raise ValueError(f"unsupported {kind}; use {DATASET_FORMS}")


def dataset_path(dataset: str) -> Path:
    """The file a dataset names, `~` expanded (left as written when it names no known user)."""
    try:
        return Path(dataset).expanduser()
    except RuntimeError:  # "~nosuchuser/...": read_prompts then says the file is not found
        return Path(dataset)


def file_digest(path: Path) -> str | None:
    """sha256 of the file's bytes (cached while its size and mtime stay the same); None when
    the file cannot be read, which pre-flight reports on its own."""
    try:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if key not in _digests:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            _digests[key] = digest.hexdigest()
        return _digests[key]
    except (OSError, ValueError):
        return None


def dataset_identity(dataset: str) -> str:
    """What the config hash sees: names as written, a readable file as `sha256:<hex>`."""
    if not is_file_dataset(dataset):
        return dataset
    digest = file_digest(dataset_path(dataset))
    return f"sha256:{digest}" if digest else dataset
