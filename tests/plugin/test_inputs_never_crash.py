"""No input crashes a session (issue 7, part 2), seen the way users see it, through pytester.

Bad `--llem-*` options and ini values stop the session with a one-line usage error before any
test runs. Bad marker keywords, `llem.run()` overrides, `llem.measure()` arguments and data
files error or fail exactly the test that holds them, with one line; the rest of the session
runs. In no case does the output hold a traceback or an INTERNALERROR.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

QUIET = ["--llem-energy=none", "--llem-baseline-s=0", "--llem-min-window-s=0", "-p", "no:cacheprovider"]


def _assert_no_traceback(result: pytest.RunResult) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output
    assert "Traceback" not in output
    # pytest's traceback format: source lines marked '>' and error lines marked 'E'
    assert not [line for line in output.splitlines() if line.startswith((">   ", "E   "))]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--llem-watts-per-core=inf"],
            "llem config from --llem-watts-per-core: energy.watts_per_core=inf is invalid",
        ),
        (
            ["--llem-watts-per-core=1e309"],
            "energy.watts_per_core=inf is invalid: Input should be a finite number",
        ),
        (["--llem-sample-hz=nan"], "energy.sample_hz=nan is invalid: Input should be a finite number"),
        (["--llem-threads=9223372036854775808"], "num_threads=9223372036854775808 is invalid"),
        (["--llem-repeats=1000000000000000000000000000000"], "Input should be less than or equal to 10000"),
        (
            ["--llem-repeats=abc"],
            "--llem-repeats='abc' is invalid: expected an integer, e.g. --llem-repeats=3",
        ),
        (["--llem-baseline-s=forever"], "--llem-baseline-s='forever' is invalid: expected a number"),
        (["--llem-warmup=-1"], "llem config from --llem-warmup: warmup.n_warmup=-1 is invalid"),
        (["--llem-energy=gpu"], "llem config from --llem-energy: energy.meter='gpu' is invalid"),
        (["--llem-device=gpu0"], "llem config from --llem-device: device='gpu0' is invalid"),
    ],
)
def test_bad_options_are_a_one_line_usage_error(
    pytester: pytest.Pytester, args: list[str], expected: str
) -> None:
    pytester.makepyfile("def test_never_runs(): pass")
    result = pytester.runpytest(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr.str()
    _assert_no_traceback(result)


@pytest.mark.parametrize(
    ("ini", "expected"),
    [
        (
            "llem_watts_per_core = inf",
            "llem config from llem_watts_per_core in tox.ini: energy.watts_per_core=inf",
        ),
        ("llem_repeats = lots", "llem_repeats in tox.ini='lots' is invalid: expected an integer"),
        ("llem_threads = 9223372036854775808", "num_threads=9223372036854775808 is invalid"),
        (
            "llem_autosave = maybe",
            "llem_autosave in tox.ini is invalid: invalid truth value 'maybe'; use true or false",
        ),
    ],
)
def test_bad_ini_values_are_a_one_line_usage_error(
    pytester: pytest.Pytester, ini: str, expected: str
) -> None:
    pytester.makefile(".ini", tox=f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_never_runs(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr.str()
    _assert_no_traceback(result)


BAD_TESTS = """
import pytest
import torch

TINY = dict(model="tiny", n_prompts=2, max_new_tokens=2, warmup=0, repeats=1)

@pytest.mark.llem(repeats=10**30)
def test_marker_repeats(llem): pass

@pytest.mark.llem(n_prompts=10**30)
def test_marker_n_prompts(llem): pass

@pytest.mark.llem(num_threads=2**63)
def test_marker_threads(llem): pass

@pytest.mark.llem(passthrough_kwargs={"torch_dtype": torch.bfloat16})
def test_marker_passthrough(llem): pass

@pytest.mark.llem(energy={"watts_per_core": float("inf")})
def test_marker_watts(llem): pass

@pytest.mark.llem("tiny")
def test_marker_positional(llem): pass

@pytest.mark.llem(dataset="bad_line_2.jsonl", **TINY)
def test_marker_bad_jsonl(llem): pass

@pytest.mark.llem(dataset="latin1.csv", **TINY)
def test_marker_not_utf8(llem): pass

@pytest.mark.llem(dataset="missing.jsonl", **TINY)
def test_marker_missing_file(llem): pass

def test_run_repeats(llem):
    llem.run(repeats=10**30)

def test_run_passthrough(llem):
    llem.run(passthrough_kwargs={"torch_dtype": torch.float16})

def test_run_bad_column(llem):
    llem.run(dataset="no_prompt_column.csv", **TINY)

def test_measure_tokens_not_a_number(llem):
    with llem.measure(output_tokens="many"):
        pass

def test_measure_tokens_beyond_the_limit(llem):
    with llem.measure(output_tokens=10**30):
        pass

def test_the_rest_of_the_session_runs(llem):
    assert llem.config.repeats >= 1
"""


def test_bad_marker_and_run_values_error_exactly_their_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad=BAD_TESTS)
    pytester.path.joinpath("bad_line_2.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    pytester.path.joinpath("latin1.csv").write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    pytester.path.joinpath("no_prompt_column.csv").write_text("id,body\n1,hello\n")
    result = pytester.runpytest(*QUIET, "-rfE", "-vv")  # -vv: summary lines untruncated
    _assert_no_traceback(result)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 14
    result.stdout.fnmatch_lines_random(
        [
            "*test_marker_repeats*llem config from @pytest.mark.llem: repeats=* is invalid: Input should be less "
            "than or equal to 10000",
            "*test_marker_n_prompts*Input should be less than or equal to 1000000",
            "*test_marker_threads*num_threads=9223372036854775808 is invalid*",
            "*test_marker_passthrough*pass the string 'bfloat16' instead",
            "*test_marker_watts*energy.watts_per_core=inf is invalid: Input should be a finite number",
            "*test_marker_positional*keyword arguments only*",
            "*test_marker_bad_jsonl*pre-flight failed*bad_line_2.jsonl': line 2 is not valid JSON*",
            "*test_marker_not_utf8*latin1.csv': line 2 is not valid UTF-8 (byte offset 10*re-encode the file as UTF-8*",
            "*test_marker_missing_file*missing.jsonl': file not found*",
            "*test_run_repeats*llem config from llem.run(): repeats=* is invalid*",
            "*test_run_passthrough*pass the string 'float16' instead",
            "*test_run_bad_column*no prompt column found; columns found: [[]'id', 'body'[]]*",
            "*test_measure_tokens_not_a_number*llem.measure(output_tokens='many'): must be an integer from 1 to*",
            "*test_measure_tokens_beyond_the_limit*must be an integer from 1 to 1000000000 - the output tokens*",
        ]
    )


BAD_MEASURE_TESTS = """
import numpy
import pytest

pytestmark = pytest.mark.llem(repeats=1, warmup=0)

def generate():
    pass

def test_call_without_tokens(llem):
    llem.measure(generate)

def test_block_without_tokens(llem):
    with llem.measure():
        pass

def test_call_with_positional_tokens(llem):
    llem.measure(generate, 256)

def test_result_instead_of_function(llem):
    llem.measure(generate(), output_tokens=256)

@pytest.mark.parametrize("tokens", [0, -3, 2.5, True, float("nan"), None])
def test_call_with_bad_tokens(llem, tokens):
    llem.measure(generate, output_tokens=tokens)

def test_block_with_bad_input_tokens(llem):
    with llem.measure(output_tokens=4, input_tokens=-1):
        pass

def test_any_integer_type_is_a_count(llem):
    result = llem.measure(generate, output_tokens=numpy.int64(4))
    assert result.repeats[0].output_tokens == 4
"""


def test_bad_measure_arguments_fail_exactly_their_test_with_one_line(pytester: pytest.Pytester) -> None:
    """output_tokens is required: energy per output token is what the window is for, and only
    the caller knows how many tokens its code generates."""
    pytester.makepyfile(test_measure=BAD_MEASURE_TESTS)
    result = pytester.runpytest(*QUIET, "-rfE", "-vv")
    _assert_no_traceback(result)
    result.assert_outcomes(passed=1, failed=11)
    example = "e.g. llem.measure(model.generate, output_tokens=256)"
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *test_call_without_tokens - *llem.measure(output_tokens=...): required - the number of "
            f"output tokens fn generates per call, {example}",
            "FAILED *test_block_without_tokens - *llem.measure(output_tokens=...): required - the number of "
            "output tokens the block generates, e.g. with llem.measure(output_tokens=256):",
            f"FAILED *test_call_with_positional_tokens - *llem.measure(fn, 256): pass the token count by name, {example}",
            "FAILED *test_result_instead_of_function - *llem.measure(None, output_tokens=256): output_tokens "
            "given twice - the first argument is not callable; pass the function itself*",
            "FAILED *test_call_with_bad_tokens[[]0[]] - *llem.measure(output_tokens=0): must be an integer from 1 to "
            "1000000000 - the output tokens fn generates per call",
            "FAILED *test_call_with_bad_tokens[[]-3[]] - *llem.measure(output_tokens=-3): must be an integer*",
            "FAILED *test_call_with_bad_tokens[[]2.5[]] - *llem.measure(output_tokens=2.5): must be an integer*",
            "FAILED *test_call_with_bad_tokens[[]True[]] - *llem.measure(output_tokens=True): must be an integer*",
            "FAILED *test_call_with_bad_tokens[[]nan[]] - *llem.measure(output_tokens=nan): must be an integer*",
            "FAILED *test_call_with_bad_tokens[[]None[]] - *llem.measure(output_tokens=None): must be an integer*",
            "FAILED *test_block_with_bad_input_tokens - *llem.measure(input_tokens=-1): must be an integer from 0 "
            "to 1000000000 - the prompt tokens, 0 if unknown",
        ]
    )
