"""What an experiment config may hold: size bounds, and values the report can store.

Every value the config accepts must fit the JSON report and the int64/float64 columns of the
Parquet table, and sizes are bounded far beyond any real experiment, so a typo such as
`repeats=10**30` is refused at validation with a one-line error naming the limit instead of
hanging, exhausting memory, or aborting the session when the report is written. The README
lists the bounds under "Limits".
"""

from __future__ import annotations

import math
from typing import Any

INT64_MAX = 2**63 - 1
MAX_REPEATS = 10_000
MAX_PROMPTS = 1_000_000
MAX_BATCH_SIZE = 100_000
MAX_TOKENS = 1_000_000_000  # max_new_tokens, max_input_tokens, llem.measure(output_tokens=...)
MAX_SYNTHETIC_TOKENS = 10_000_000  # n_prompts x N of synthetic:N, held in memory as token ids
MAX_WARMUP = 10_000  # n_warmup, cv_window, min_prompts, max_prompts
MAX_THREADS = 4_096
MAX_WAIT_S = 3_600.0  # baseline_s, thermal_floor_s, min_window_s
MAX_PASSES = 10_000  # passes of the workload in one calibrated window
MAX_TTL_S = 30 * 24 * 3_600.0  # baseline_ttl_s
MAX_WATTS_PER_CORE = 1_000.0
MAX_POWER_LIMIT_W = 10_000.0  # power_limit_w: above any board's range
MAX_CLOCK_MHZ = 10_000  # gpu_clocks_mhz
MAX_REQUEST_RATE = 1_000_000.0  # request_rate, requests per second
MAX_BURSTINESS = 1_000.0  # burstiness: a gamma shape this large is evenly spaced to 3%
MAX_TEXT = 4_096  # characters of a name or path
MAX_NESTING = 32  # depth of passthrough_kwargs values


def storable_text(value: str) -> str:
    """A name or path the report (UTF-8 JSON) and the file system can both take."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


def json_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """Why `value` cannot be stored faithfully in the JSON report, or None when it can."""
    if depth > MAX_NESTING:
        return f"{where} is nested deeper than {MAX_NESTING} levels"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -INT64_MAX - 1 <= value <= INT64_MAX else f"{where}={value} does not fit in int64"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}={value} is not a finite number"
    if isinstance(value, str):
        try:
            storable_text(value)
        except ValueError as exc:
            return f"{where} {exc}"
        return None
    if isinstance(value, list):
        problems = (json_problem(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        return next((p for p in problems if p), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the non-string key {key!r}; JSON keys are strings, write {str(key)!r}"
            problem = json_problem(item, f"{where}[{key!r}]", depth + 1)
            if problem:
                return problem
        return None
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    hint = "use a list" if isinstance(value, (tuple, set, frozenset)) else "pass a JSON value"
    if kind == "torch.dtype":
        hint = f"pass the string {str(value).removeprefix('torch.')!r} instead"
    return f"{where} is of type {kind}, which the JSON report cannot store; {hint}"
