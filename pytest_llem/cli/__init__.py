"""The `llem` command line: run, compare, ab, report, trend, show, list, merge."""

from pytest_llem.cli.commands import main

__all__ = ["main"]
