"""The session options, parsed once into one typed object (plugin/session_options.py)."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_llem.plugin.session_options import SessionOptions, field_name, session_rows

pytest_plugins = ["pytester"]


def test_every_session_row_of_the_option_table_is_a_field_and_nothing_else() -> None:
    rows = {field_name(option): option for option in session_rows()}
    fields = {f.name: f for f in dataclasses.fields(SessionOptions)}
    assert set(rows) == set(fields)
    for name, option in rows.items():  # a flag is a bool, a repeatable option a tuple
        if option.is_flag:
            assert fields[name].type == "bool", name
        if option.repeatable:
            assert fields[name].type.startswith("tuple["), name


def test_the_options_are_read_flag_first_then_ini_and_parsed_once(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nllem_ab_max_pairs = 12\nllem_markdown = from-ini.md\nllem_fail_on = tokens_per_second:5%\n"
    )
    pytester.makeconftest(
        """
        import pytest
        from pytest_llem.plugin.session_options import SESSION_OPTIONS_KEY, session_options

        def pytest_collection_finish(session):
            config = session.config
            first = config.stash[SESSION_OPTIONS_KEY]
            assert session_options(config) is first  # parsed once, at configure
            print("OPTIONS", first.ab_max_pairs, first.markdown, first.fail_on, first.fail_on_invalid, first.gates)
        """
    )
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-s", "--llem-markdown=from-flag.md", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["OPTIONS 12 from-flag.md ('tokens_per_second:5%',) False True"])


def test_a_bad_session_option_is_one_usage_error_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--llem-ab-max-pairs=many", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        result.stderr.lines[0]
        == "ERROR: --llem-ab-max-pairs='many' is invalid: expected an integer, e.g. --llem-ab-max-pairs=3"
    )
