"""The entry point of the A/B base process (started by `pytest_llem.plugin.ab.session` with
`worker.BOOTSTRAP`): import the instrument from the head's tree, then isolate sys.path into the
base worktree and run pytest with the base worker plugin."""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

import pytest_llem
import pytest_llem.plugin  # the instrument, imported before sys.path points into the worktree
from pytest_llem.plugin.ab.worker import ROLE_ENV, BaseWorkerPlugin, isolated_path


def main(argv: list[str]) -> int:
    """argv: FD WORKTREE HEAD_ROOT TOOL_PARENT -- PYTEST_ARGS..."""
    fd, worktree, head_root, tool_parent = argv[:4]
    pytest_args = argv[5:] if len(argv) > 4 and argv[4] == "--" else argv[4:]
    tool_dir = Path(pytest_llem.__file__).resolve().parent
    if sys.path and sys.path[0] == tool_parent:
        sys.path.pop(0)
    sys.path[:] = isolated_path(sys.path, Path(head_root).resolve(), Path(worktree).resolve())
    os.environ[ROLE_ENV] = "base"
    connection = Connection(int(fd))
    plugin = BaseWorkerPlugin(connection, Path(head_root).resolve(), Path(worktree).resolve(), tool_dir)
    code = pytest.main(pytest_args, plugins=[plugin])
    connection.close()
    return int(code)
