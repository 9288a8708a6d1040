"""The head side of A/B mode in pytest: `pytest benchmarks/ --llem-ab origin/main`.

Why an option of the normal pytest run rather than a wrapper command: the head side *is* the
user's ordinary session - same collection, fixtures, markers, JUnit XML, exit code - and only
the base needs a second process. That process is started here, in a git worktree of REF,
and asked to run each test exactly when the head runs it; `HeadTurns` then interleaves the
two experiments' windows ABBA, and the gate compares the paired windows.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llem.hardware import cpu_time
from pytest_llem.hardware.slots import pin_all_threads
from pytest_llem.plugin.ab.protocol import HeadTurns
from pytest_llem.plugin.ab.worker import (
    BOOTSTRAP,
    CORES_ENV,
    ROLE_ENV,
    base_counterpart,
    headroom_layer,
    pin_to_shared_cores,
)
from pytest_llem.plugin.ab.worktree import Worktree, WorktreeError, create, remove_stale, repository_root
from pytest_llem.plugin.ledger import LEDGER_DIR
from pytest_llem.plugin.state import AB_HEADROOM_KEY, SLOT_KEY

AB_SIDE_SUFFIX = ".ab.json"  # an xdist worker's A/B run, for the controller's gate record

if TYPE_CHECKING:
    from pytest_llem.plugin.state import LlemState

# options of the head's command line that must not reach the base worker: outputs that would
# collide with the head's, and A/B itself; the worker gets its own report path instead
_STRIP_VALUE = (
    "--llem-ab",
    "--llem-json",
    "--llem-html",
    "--llem-save",
    "--llem-compare",
    "--llem-markdown",
    "--llem-dir",
    "--junitxml",
    "--junit-xml",
    "--junitprefix",
    "--benchmark-json",
    "--benchmark-save",
    "--basetemp",
    "--result-log",
)
_STRIP_FLAG = ("--llem-autosave", "--llem-fail-on-inconclusive", "--benchmark-autosave", "-d", "--distload")
# pytest-xdist's: under xdist each worker starts its own base, which runs its tests itself
_STRIP_VALUE_XDIST = ("-n", "--numprocesses", "--dist", "--tx", "--maxprocesses", "--max-worker-restart")
_XDIST_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")
START_TIMEOUT_S = 600.0


def base_arguments(args: list[str]) -> list[str]:
    """The head's pytest arguments without the options that are the head's alone."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _STRIP_FLAG:
            continue
        if name in _STRIP_VALUE or name in _STRIP_VALUE_XDIST:
            skip = "=" not in arg
            continue
        if arg.startswith("-n") and not arg.startswith("--"):  # -n2, -nauto
            continue
        out.append(arg)
    return out


@dataclass
class AbRun:
    """One A/B session: the worktree, the base worker process and the conversation with it."""

    worktree: Worktree
    process: subprocess.Popen[bytes]
    connection: Connection
    turns: HeadTurns
    base_report: Path
    log_path: Path
    base_nodeids: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    head_nodeids: list[str] = field(default_factory=list)
    restore_cores: set[int] | None = None  # the head's affinity before A/B pinned it
    closed: bool = False

    @property
    def ref(self) -> str:
        return self.worktree.ref

    @property
    def commit(self) -> str | None:
        return self.worktree.commit

    def side(self) -> dict[str, Any]:
        """What the gate's record tells of this A/B run (`plugin.gate.AbSide`)."""
        return {
            "ref": self.ref,
            "commit": self.commit,
            "base_nodeids": self.base_nodeids,
            "head_nodeids": self.head_nodeids,
        }

    def close(self) -> None:
        """Stop the worker and remove the worktree; never raises, and a second call does
        nothing. Closing our end also unblocks a worker that never got "stop" (it reads EOF
        and exits)."""
        if self.closed:
            return
        self.closed = True
        self.turns.stop()
        self.connection.close()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        cpu_time.include_in_tree(self.process.pid)
        self.worktree.remove()
        if self.restore_cores is not None:
            os.sched_setaffinity(0, self.restore_cores)


def start_ab(state: LlemState, ref: str, cores: set[int] | None = None) -> AbRun:
    """Check out REF and start the base worker in it; it collects while the head does."""
    config = state.config
    try:
        head_root = repository_root(config.invocation_params.dir)
        remove_stale(head_root, state.store.root.resolve())
        worktree = create(head_root, ref, state.store.root.resolve())
    except WorktreeError as exc:
        raise pytest.UsageError(f"--llem-ab {ref}: {exc}") from None
    label = worktree.path.parent.name
    base_dir = worktree.path.parent.parent / f"{label}-base"  # kept after the worktree goes
    base_dir.mkdir(parents=True, exist_ok=True)
    base_report, log_path = base_dir / "report.json", base_dir / "worker.log"
    cwd = worktree.path / config.invocation_params.dir.resolve().relative_to(head_root)
    args = [*base_arguments(list(config.invocation_params.args)), f"--llem-json={base_report}"]
    ours, theirs = socket.socketpair()
    tool_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, **{ROLE_ENV: "base", CORES_ENV: ",".join(map(str, sorted(cores or ())))})
    for name in _XDIST_ENV:  # the base of an xdist worker is no xdist worker itself
        env.pop(name, None)
    if env.get("PYTEST_ADDOPTS"):  # the same filter: a --junitxml there is the head's alone
        env["PYTEST_ADDOPTS"] = shlex.join(base_arguments(shlex.split(env["PYTEST_ADDOPTS"])))
    if env.get("PYTHONPATH"):  # entries of the head's code point at the worktree instead
        env["PYTHONPATH"] = os.pathsep.join(
            str(counterpart) if (counterpart := base_counterpart(Path(p), head_root, worktree.path)) else p
            for p in env["PYTHONPATH"].split(os.pathsep)
        )
    command = [
        sys.executable,
        "-P",
        "-c",
        BOOTSTRAP,
        str(theirs.fileno()),
        str(worktree.path),
        str(head_root),
        tool_parent,
        "--",
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(theirs.fileno(),)
        )
    theirs.close()
    cpu_time.exclude_from_tree(process.pid)  # the head's estimate counts its own tree only
    connection = Connection(ours.detach())
    turns = HeadTurns(connection, state)  # its waits show through the session's progress
    return AbRun(worktree, process, connection, turns, base_report, log_path)


def await_collected(run: AbRun) -> str | None:
    """Wait for the base's collection (it started alongside the head's); the reason on failure."""
    ref = run.worktree.ref
    if not run.connection.poll(START_TIMEOUT_S):
        run.process.kill()
        return _start_failure(run, ref, f"did not collect within {START_TIMEOUT_S:g} s")
    try:
        message = run.connection.recv()
    except (EOFError, OSError):
        run.process.wait()
        return _start_failure(run, ref, f"exited with code {run.process.returncode}")
    run.base_nodeids, run.leaked = list(message[1]), list(message[2])
    return None


def _start_failure(run: AbRun, ref: str, why: str) -> str:
    lines = [line for line in run.log_path.read_text(errors="replace").splitlines() if line.strip()]
    tail = lines[-1] if lines else "no output"
    run.turns.broken = why
    return f"--llem-ab {ref}: the base worker {why}: {tail} (full log: {run.log_path})"


class AbHooks:
    """Registered only in A/B mode: run each test on the base at the same time, and clean up."""

    def __init__(self, run: AbRun, ab_dir: Path, side_file: Path | None = None) -> None:
        self._run = run
        self._ab_dir = ab_dir
        self._side_file = side_file

    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        """Never collect the base's checkout as part of the head's suite."""
        return True if collection_path.resolve().is_relative_to(self._ab_dir) else None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._run.head_nodeids = [item.nodeid for item in session.items]
        problem = await_collected(self._run)
        if problem is not None:
            pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)
        if self._side_file is not None:  # under xdist: what the controller's gate record needs
            self._side_file.write_text(json.dumps(self._run.side()))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Let the base write its report while the head writes its own."""
        self._run.turns.stop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        self._run.turns.start_test(item.nodeid, nextitem.nodeid if nextitem else None)
        try:
            return (yield)
        finally:
            self._run.turns.end_test()

    @pytest.hookimpl(trylast=True, specname="pytest_sessionfinish")
    def end_base(self) -> None:
        """The base has written its report by now; end it and remove its worktree here, not at
        unconfigure: an xdist worker tells the controller it finished right after this hook,
        and the controller's session may end (and its caller look for leftovers) before a
        worker's unconfigure has run."""
        self._run.close()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._run.close()  # a session that never reached sessionfinish (a usage error)


def configure_ab(state: LlemState, ref: str) -> AbRun | None:
    """Start A/B mode for this session; None inside the base worker itself (no recursion)."""
    if os.environ.get(ROLE_ENV) == "base":
        return None
    if state.slot is not None and state.slot.problem:
        return None  # its experiment tests fail at setup with the slot's problem
    if state.slot is not None and state.slot.cores:  # an xdist worker: both sides on its slot
        slot_cores = set(state.slot.cores)
        previous: set[int] | None = set(os.sched_getaffinity(0))
        cores: set[int] | None = slot_cores
        pin_all_threads(slot_cores)
    else:
        cores, previous = pin_to_shared_cores()  # before the base starts: it inherits them
    try:
        run = start_ab(state, ref, cores)
    except BaseException:
        if previous is not None:
            os.sched_setaffinity(0, previous)
        raise
    run.restore_cores = previous
    state.turns = run.turns
    state.config.stash[AB_HEADROOM_KEY] = headroom_layer(cores)
    slot_state = state.config.stash.get(SLOT_KEY, None)
    if slot_state is not None and slot_state.slot.cores:
        slot_state.pinned = True  # to the slot's cores, above
    side_file = None
    if state.slot is not None:
        directory = state.run_dir / LEDGER_DIR
        directory.mkdir(exist_ok=True)
        side_file = directory / f"{state.slot.worker}{AB_SIDE_SUFFIX}"
    hooks = AbHooks(run, run.worktree.path.parent.parent.resolve(), side_file)
    state.config.pluginmanager.register(hooks, "llem-ab")
    return run
