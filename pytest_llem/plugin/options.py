"""Every pytest-llem option, defined once: command-line flag, ini twin, `llem run` flag, help
text, type. One table (`TABLE`) feeds pytest's flags and ini keys (`OPTIONS`), `llem run`'s
arguments (`RUN_OPTIONS`, the same option without its `llem-` prefix: `--llem-repeats` is
`llem run --repeats`) and the help texts, so they cannot drift apart.

Precedence for experiment settings: llem.run() overrides > @pytest.mark.llem keywords >
command line > ini file > built-in defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_llem.gate.gated_metrics import fail_on_help
from pytest_llem.schema.registry import ISOLATION_MODES, METERS


@dataclass(frozen=True)
class Option:
    flag: str
    ini: str
    help: str
    parse: Callable[[str], Any] = str
    config_path: tuple[str, ...] | None = None  # where it lands in ExperimentConfig
    metavar: str | None = None
    repeatable: bool = False
    is_flag: bool = False
    pytest: bool = True  # a pytest flag with its ini twin
    run: bool = False  # an argument of `llem run`
    run_help: str | None = None  # where `llem run` needs other words than pytest's help

    @property
    def run_flag(self) -> str:
        """How `llem run` spells it: the pytest flag without `llem-`."""
        return "--" + self.flag.removeprefix("--llem-")


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _isolation(text: str) -> str:
    mode = text.strip().lower()
    if mode not in ISOLATION_MODES:
        raise ValueError(f"expected one of {', '.join(ISOLATION_MODES)}")
    return mode


TABLE = (
    Option(
        "--llem-energy",
        "llem_energy",
        f"energy meter: auto, {', '.join(METERS.builtin)} or one a package registers (default auto)",
        config_path=("energy", "meter"),
        metavar="METER",
        run=True,
    ),
    Option(
        "--llem-model",
        "llem_model",
        "model for experiments that name none: built-in alias (tiny, smollm2-135m), local directory or hub id",
        config_path=("model",),
        metavar="MODEL",
        run=True,
        run_help="the model to run: built-in alias (tiny, smollm2-135m), local directory or hub id",
    ),
    Option(
        "--llem-device",
        "llem_device",
        "device: auto, cpu, cuda or cuda:N (default auto)",
        config_path=("device",),
        metavar="DEVICE",
        run=True,
    ),
    Option(
        "--llem-repeats",
        "llem_repeats",
        "measurement windows per experiment (default 3)",
        int,
        ("repeats",),
        "N",
        run=True,
    ),
    Option(
        "--llem-min-window-s",
        "llem_min_window_s",
        "each window repeats the workload until it lasts at least SECONDS (calibrated after warmup; "
        "default 1 on CPU, 5 on GPU; 0 = one pass per window)",
        float,
        ("min_window_s",),
        "SECONDS",
        run=True,
    ),
    Option(
        "--llem-warmup",
        "llem_warmup",
        "fixed warmup generate calls before measuring (default 5)",
        int,
        ("warmup", "n_warmup"),
        "N",
        run=True,
    ),
    Option(
        "--llem-threads",
        "llem_threads",
        "torch CPU threads, fixed and recorded (default: all cores)",
        int,
        ("num_threads",),
        "N",
        run=True,
    ),
    Option(
        "--llem-baseline-s",
        "llem_baseline_s",
        "idle baseline seconds; 0 turns it off (default 30 on GPU, 2 otherwise)",
        float,
        ("energy", "baseline_s"),
        "SECONDS",
        run=True,
    ),
    Option(
        "--llem-watts-per-core",
        "llem_watts_per_core",
        "estimate meter: assumed watts per busy CPU core (default 10)",
        float,
        ("energy", "watts_per_core"),
        "WATTS",
        run=True,
    ),
    Option(
        "--llem-sample-hz",
        "llem_sample_hz",
        "power/thermal sampler rate in Hz (default 10)",
        float,
        ("energy", "sample_hz"),
        "HZ",
        run=True,
    ),
    Option(
        "--llem-json",
        "llem_json",
        "write the session report to PATH (experiments.parquet goes beside it)",
        metavar="PATH",
        run=True,
    ),
    Option(
        "--llem-html",
        "llem_html",
        "write a self-contained HTML report (charts of power, J/token, trend) to PATH at session end",
        metavar="PATH",
        run=True,
    ),
    Option(
        "--llem-dir",
        "llem_dir",
        "root directory of stored runs; each session gets its own runs/<name> (default .llem under the rootdir)",
        metavar="DIR",
    ),
    Option(
        "--llem-save",
        "llem_save",
        "store this run as .llem/runs/NAME (NAME.2, ... when taken: a stored run is never replaced); "
        "NAME: letters, digits, '.', '_', '-'",
        metavar="NAME",
        run=True,
    ),
    Option(
        "--llem-autosave",
        "llem_autosave",
        "store this run as .llem/runs/<commit>[-dirty] (NAME.2, ... when taken) so --llem-compare=<commit> finds it",
        _bool,
        is_flag=True,
    ),
    Option(
        "--llem-compare",
        "llem_compare",
        "compare each experiment with a baseline report: a path, a run name, or 'latest'",
        metavar="BASELINE",
    ),
    Option(
        "--llem-fail-on",
        "llem_fail_on",
        fail_on_help("energy_per_output_token_j:5 and tokens_per_second:5; 2 instead of 5 in A/B mode"),
        metavar="METRIC:PCT",
        repeatable=True,
    ),
    Option(
        "--llem-fail-on-inconclusive",
        "llem_fail_on_inconclusive",
        "also fail a gated test whose verdict is inconclusive (strict CI; default: only 'worse' fails)",
        _bool,
        is_flag=True,
    ),
    Option(
        "--llem-fail-on-invalid",
        "llem_fail_on_invalid",
        "also fail a gated test whose energy figure was not gated because the experiment is invalid",
        _bool,
        is_flag=True,
    ),
    Option(
        "--llem-require-valid",
        "llem_require_valid",
        "fail every experiment whose validity is not 'valid' (invalid by a rule, or only estimated)",
        _bool,
        is_flag=True,
    ),
    Option(
        "--llem-ab",
        "llem_ab",
        "A/B mode: also run the suite at git revision REF (a worktree under --llem-dir), its windows "
        "interleaved ABBA with this working tree's, and gate on the paired ratios",
        metavar="REF",
    ),
    Option(
        "--llem-ab-max-pairs",
        "llem_ab_max_pairs",
        "A/B: most ABBA pairs per experiment; pairs are added from the experiment's repeats until "
        "every gated verdict is settled (default 60)",
        int,
        metavar="N",
    ),
    Option(
        "--llem-ab-budget-s",
        "llem_ab_budget_s",
        "A/B: seconds of measured pairs per experiment after which no pair is started (default 300)",
        float,
        metavar="SECONDS",
    ),
    Option(
        "--llem-markdown",
        "llem_markdown",
        "write the gate's comparison as a Markdown PR comment to PATH",
        metavar="PATH",
    ),
    Option(
        "--llem-shard",
        "llem_shard",
        "run shard I of N of the collected tests (by test id), e.g. 2/4; 'auto/N' takes I from "
        "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX; under a Slurm job array it is picked up by itself",
        metavar="I/N",
    ),
    Option(
        "--llem-shard-durations",
        "llem_shard_durations",
        "balance --llem-shard by the test durations of this earlier report (file, run directory or "
        "stored run name); default: the newest complete stored run that was not a shard",
        metavar="REPORT",
    ),
    Option(
        "--llem-gpus-per-worker",
        "llem_gpus_per_worker",
        "under pytest-xdist: GPUs each worker gets to itself, taken in order from the visible ones "
        "(CUDA_VISIBLE_DEVICES); -n auto is then one worker per slot; 0 hides GPUs from workers",
        int,
        metavar="N",
    ),
    Option(
        "--llem-carbon-intensity",
        "llem_carbon_intensity",
        "grid carbon intensity in g CO2e/kWh: adds grams CO2e per output token to every result",
        float,
        metavar="G_PER_KWH",
        run=True,
    ),
    Option(
        "--llem-country",
        "llem_country",
        "ISO 3166 alpha-3 country (FRA, DEU, USA...): carbon intensity from CodeCarbon's offline country data",
        metavar="ISO",
        run=True,
    ),
    Option(
        "--llem-isolation",
        "llem_isolation",
        "where engines run: process (default: each engine in a process of its own, so a crash "
        "such as a segfault or the OOM killer fails one experiment, not the session) or none "
        "(in pytest's process); default: LLEM_ISOLATION, else process",
        _isolation,
        metavar="MODE",
        run=True,
    ),
    # settings `llem run` takes as arguments; in pytest they are marker keywords
    Option(
        "--llem-engine",
        "llem_engine",
        "inference engine (default transformers)",
        config_path=("engine",),
        metavar="ENGINE",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-dtype",
        "llem_dtype",
        "float32, float16 or bfloat16 (default float32)",
        config_path=("dtype",),
        metavar="DTYPE",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-batch-size",
        "llem_batch_size",
        "prompts per generate call (default 1)",
        int,
        ("batch_size",),
        "N",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-server-url",
        "llem_server_url",
        "engine openai: base URL of a running OpenAI-compatible server, e.g. http://127.0.0.1:8000",
        config_path=("server", "url"),
        metavar="URL",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-server-command",
        "llem_server_command",
        "engine openai: a server command to start and stop, with {port} (and {model}, {gguf}, {python})",
        config_path=("server", "command"),
        metavar="COMMAND",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-request-rate",
        "llem_request_rate",
        "engine openai: mean requests per second, Poisson arrivals; inf = all at once (default inf)",
        config_path=("request_rate",),
        metavar="RATE",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-concurrency",
        "llem_concurrency",
        "engine openai: the most requests in flight (default: no limit)",
        int,
        ("concurrency",),
        "N",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-n-prompts",
        "llem_n_prompts",
        "prompts in one pass; a window holds window_passes passes, calibrated to min_window_s (default 8)",
        int,
        ("n_prompts",),
        "N",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-max-new-tokens",
        "llem_max_new_tokens",
        "output tokens per prompt (default 64)",
        int,
        ("max_new_tokens",),
        "N",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-max-input-tokens",
        "llem_max_input_tokens",
        "prompt truncation length (default 256)",
        int,
        ("max_input_tokens",),
        "N",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-dataset",
        "llem_dataset",
        "builtin, synthetic:<tokens>, or a .jsonl/.csv/.parquet file",
        config_path=("dataset",),
        metavar="DATASET",
        pytest=False,
        run=True,
    ),
    Option(
        "--llem-seed",
        "llem_seed",
        "random seed (default 0)",
        int,
        ("seed",),
        "N",
        pytest=False,
        run=True,
    ),
)
OPTIONS = tuple(option for option in TABLE if option.pytest)  # pytest's flags and ini keys
RUN_OPTIONS = tuple(option for option in TABLE if option.run)  # `llem run`'s arguments


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("llem", "LLM inference energy experiments (pytest-llem)")
    for option in OPTIONS:
        dest = option.ini
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=dest, help=option.help)
            parser.addini(option.ini, option.help, type="bool", default=False)
        elif option.repeatable:
            group.addoption(
                option.flag,
                action="append",
                default=None,
                dest=dest,
                metavar=option.metavar,
                help=option.help,
            )
            parser.addini(option.ini, option.help, type="linelist", default=[])
        else:
            group.addoption(
                option.flag, action="store", default=None, dest=dest, metavar=option.metavar, help=option.help
            )
            parser.addini(option.ini, option.help, default=None)


# what a numeric option expects, and an example value, for the usage error
_NUMBER_KINDS: dict[Callable[[str], Any], tuple[str, str]] = {
    int: ("an integer", "3"),
    float: ("a number", "2.5"),
}


def _source(config: pytest.Config, option: Option) -> str:
    """Where a value came from, for error messages: the flag, or the ini key and its file."""
    if config.getoption(option.ini) not in (None, []):
        return option.flag
    where = config.inipath.name if config.inipath else "the ini file"
    return f"{option.ini} in {where}"


def option_value(config: pytest.Config, option: Option) -> Any:
    """Command line first, then the ini twin; parsed, or None when neither is set.

    A value that does not parse is a one-line `pytest.UsageError` naming the flag or ini key.
    """
    value = config.getoption(option.ini)
    if value is None or value == []:
        try:
            value = config.getini(option.ini)
        except (ValueError, pytest.UsageError) as exc:  # e.g. a bool ini key holding 'maybe'
            where = config.inipath.name if config.inipath else "the ini file"
            hint = "; use true or false" if option.is_flag else ""
            raise pytest.UsageError(f"{option.ini} in {where} is invalid: {exc}{hint}") from None
    if value is None or value == [] or value == "":
        return None
    if option.is_flag or option.repeatable:
        return value
    try:
        return option.parse(str(value))
    except ValueError as exc:
        kind = _NUMBER_KINDS.get(option.parse)
        detail = f"expected {kind[0]}, e.g. {option.flag}={kind[1]}" if kind else str(exc)
        raise pytest.UsageError(f"{_source(config, option)}={str(value)!r} is invalid: {detail}") from None


def option_by_flag(flag: str) -> Option:
    return next(option for option in TABLE if option.flag == flag)


def experiment_layer(config: pytest.Config) -> dict[str, Any]:
    """The experiment settings given on the command line or in the ini file.

    Every option is read here, at configure time, and each experiment setting is validated on
    its own, so a bad value stops the session with one line naming its flag or ini key (a
    pytest usage error) before any test runs. Raises `ConfigError` for a value that parses but
    is not allowed, `pytest.UsageError` for one that does not parse.
    """
    layer: dict[str, Any] = {}
    for option in OPTIONS:
        value = option_value(config, option)
        if option.config_path is None or value is None:
            continue
        from pytest_llem.schema.config import build_config, deep_merge  # only when a setting is given

        single: dict[str, Any] = {}
        target = single
        for part in option.config_path[:-1]:
            target = target.setdefault(part, {})
        target[option.config_path[-1]] = value
        build_config((_source(config, option), single))
        layer = deep_merge(layer, single)
    if layer:  # and together (a combination can be invalid where each value is not)
        from pytest_llem.schema.config import build_config

        build_config(("--llem-* options / ini", layer))
    return layer
