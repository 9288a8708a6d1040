"""The base side of A/B mode: a pytest session in the base worktree, run test by test on
the head's command, its windows taken only when the head says "go".

Isolation: the worker starts as `python -P` (no script directory or cwd on sys.path), imports
pytest-llem - the measuring instrument, the same code on both sides - and then rewrites
sys.path so that every entry inside the head's repository points at the same place in the
worktree, with the worktree root and its `src/` first. A package of the project installed in
editable mode (a .pth path or setuptools' finder, which runs after sys.path) therefore imports
the base's code. What cannot be isolated, and is the same on both sides: compiled extensions
built in place or installed non-editable, everything else in site-packages, and pytest-llem
itself. Modules that were still imported from the head's tree are reported as leaked.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from pytest_llem.plugin.ab.protocol import BaseTurns
from pytest_llem.plugin.state import AB_HEADROOM_KEY, LlemState, llem_state

ROLE_ENV = "PYTEST_LLEM_AB_ROLE"  # "base" inside the worker: --llem-ab must not recurse
CORES_ENV = "PYTEST_LLEM_AB_CORES"  # the cores both sides share, e.g. "1" ("" = not pinned)

BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[4]); "
    "from pytest_llem.plugin.ab.base_process import main; raise SystemExit(main(sys.argv[1:]))"
)


def shared_cores(available: set[int] | None = None) -> set[int] | None:
    """The cores both A/B sides run on: every core this process may use but the lowest, which
    is left to the rest of the machine. None with a single core (nothing to leave free).

    Why one set for both sides: they never measure at once, and a side that the scheduler
    keeps on a busier core reads slower in every window - a bias no pairing cancels (one
    identical run on the 2-core VM read the head 9% faster while other work ran beside it;
    docs/gate.md, "Headroom")."""
    cores = sorted(os.sched_getaffinity(0) if available is None else available)
    return set(cores[1:]) if len(cores) >= 2 else None


def pin_to_shared_cores() -> tuple[set[int] | None, set[int] | None]:
    """Pin this process (and what it starts later, the base worker included) to the shared
    cores: (the shared cores, the affinity to restore when A/B ends); (None, None) where
    affinity cannot be set (not Linux) or there is one core."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    previous = set(os.sched_getaffinity(0))
    cores = shared_cores(previous)
    if cores is None:
        return None, None
    os.sched_setaffinity(0, cores)
    return cores, previous


def headroom_layer(cores: set[int] | None) -> dict[str, Any]:
    """A/B's default below every user setting: torch CPU threads = the shared cores.

    Why: with every core busy, a two-process A/B job on a 2-core VM paired windows whose
    ratios spread 6-7% (MAD) - the idle side's wake-ups, the head's own threads and other
    tenants all land on a measuring core - against 2.5% with one core left free (docs/gate.md,
    "Headroom"). The gate asks whether the pull request made the code slower, which both
    sides answer alike with one thread fewer; the config records the count, and a test or
    option that sets `num_threads` keeps its own."""
    return {"num_threads": len(cores)} if cores else {}


def _under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def base_counterpart(path: Path, head_root: Path, worktree: Path) -> Path | None:
    """Where `path`, inside the head's tree, is in the base's worktree; None when the base has
    no such part. Only the parts of the tree the checkout has count: a virtual environment, a
    build directory or a cache inside the repository (untracked, so absent from the worktree,
    like the README's own `.venv`) is the environment both sides share, not the head's code."""
    resolved = path.resolve()
    if not _under(resolved, head_root) or _under(resolved, worktree):
        return None
    relative = resolved.relative_to(head_root)
    if relative.parts and not (worktree / relative.parts[0]).exists():
        return None
    return worktree / relative


def isolated_path(entries: list[str], head_root: Path, worktree: Path) -> list[str]:
    """sys.path for the base: head-tree entries mapped into the worktree, worktree first."""
    mapped = []
    for entry in entries:
        counterpart = base_counterpart(Path(entry or "."), head_root, worktree)
        mapped.append(entry if counterpart is None else str(counterpart))
    front = [str(worktree / "src")] if (worktree / "src").is_dir() else []
    front.append(str(worktree))
    return front + [entry for entry in dict.fromkeys(mapped) if entry not in front]


def leaked_modules(head_root: Path, worktree: Path, tool_dir: Path) -> list[str]:
    """Modules of the head's code imported by the base (the instrument itself excepted)."""
    leaked = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if base_counterpart(path, head_root, worktree) is not None and not _under(path, tool_dir):
            leaked.append(name)
    return sorted(leaked)


class BaseWorkerPlugin:
    """Runs the collected tests one at a time, as the head asks, and streams results back."""

    def __init__(self, connection: Connection, head_root: Path, worktree: Path, tool_dir: Path) -> None:
        self._connection = connection
        self._head_root, self._worktree, self._tool_dir = head_root, worktree, tool_dir
        self._outcome = "passed"

    @staticmethod
    def _state(config: pytest.Config) -> LlemState:
        return llem_state(config)

    @pytest.hookimpl(trylast=True)  # after pytest-llem has made its session state
    def pytest_configure(self, config: Any) -> None:
        state = self._state(config)
        state.turns = BaseTurns(self._connection)
        # the head pinned itself before starting this process (the affinity is inherited) and
        # says which cores, so both sides default to the same thread count
        cores = os.environ.get(CORES_ENV, "")
        config.stash[AB_HEADROOM_KEY] = headroom_layer({int(c) for c in cores.split(",")} if cores else None)

    def pytest_collection_finish(self, session: Any) -> None:
        leaked = leaked_modules(self._head_root, self._worktree, self._tool_dir)
        self._connection.send(("collected", [item.nodeid for item in session.items], leaked))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: Any) -> bool:
        by_id = {item.nodeid: item for item in session.items}
        while True:
            try:
                message = self._connection.recv()  # blocks: no CPU while the head works
            except (EOFError, OSError):
                break
            if message[0] != "run":
                break
            _, nodeid, next_nodeid, baselines = message
            self._state(session.config).session.adopt_baselines(baselines)
            item = by_id.get(nodeid)
            if item is None:
                self._connection.send(("finished", nodeid, "missing"))
                continue
            self._outcome = "passed"
            nextitem = by_id.get(next_nodeid) if next_nodeid else None
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            self._connection.send(("finished", nodeid, self._outcome))
        return True

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self._outcome = "failed" if report.when == "call" else f"error in {report.when}"
        elif report.skipped and self._outcome == "passed":
            self._outcome = "skipped"

    def pytest_llem_experiment_result(self, item: Any, result: Any) -> None:
        self._connection.send(("result", result.model_dump_json()))
