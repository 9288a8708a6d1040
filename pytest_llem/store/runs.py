"""Stored runs under `.llem/runs/`: one directory per session, never shared, never replaced.

Why it is built this way: a measurement is expensive and cannot be repeated exactly, so
storage must neither lose one (two sessions writing into one directory) nor destroy one
(a name that points outside the runs directory, or an older run deleted to make room).

- Every session that measures gets its own directory, created with `os.mkdir` (exclusive:
  it fails if the directory exists) before its first experiment. The default name is
  `<UTC time>_<commit>[-dirty]_<host>-<pid>-<random>`, unique even for sessions started in
  the same second on several machines sharing one filesystem.
- `--llem-save NAME` names the directory `NAME`. NAME is one path component (letters,
  digits, `.`, `_`, `-`, not starting with `.`). If `runs/NAME` exists, the run goes to
  `NAME.2` (then `.3`, ...): a stored run is never replaced or deleted, and `NAME` refers to
  the newest complete run saved under that name. `--llem-autosave` does the same with the
  commit, `<commit>[-dirty]`, as the name.
- Nothing outside `runs/` is written; nothing is ever deleted except the session's own
  directory when it is still empty at the end (`os.rmdir`, which cannot remove files).
- A report records `completed`: false while the session runs and if it was interrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llem.store.report import REPORT_NAME, ReportError, read_report

if TYPE_CHECKING:
    from pytest_llem.schema.environment import EnvironmentSnapshot


def utc_now() -> datetime:
    """Calendar time for run names and report stamps (intervals use `hardware.clock`)."""
    return datetime.now(timezone.utc)


RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RUN_NAME_RULE = "one path component of letters, digits, '.', '_' and '-' (at most 100, not starting with '.')"
_MAX_SUFFIX = 10_000


class StorageError(OSError):
    """A run directory or report cannot be created or written; the message names the path and the fix."""


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot name a stored run (None when it can). Rejects separators, `..`,
    absolute paths and empty names, so a name can never reach outside the runs directory."""
    if not name:
        return "the name is empty"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "it contains a path separator"
    if name in (".", "..") or ".." in name:
        return "it contains '..'"
    if os.path.isabs(name):
        return "it is an absolute path"
    if not RUN_NAME_PATTERN.fullmatch(name):
        return f"a run name is {RUN_NAME_RULE}"
    return None


def check_run_name(option: str, name: str) -> None:
    """Raise ValueError with the one-line message for a bad `--llem-save` value."""
    problem = run_name_problem(name)
    if problem:
        raise ValueError(f"{option}={name!r}: {problem}; use {RUN_NAME_RULE}, e.g. {option}=main")


def machine_fingerprint(environment: EnvironmentSnapshot) -> str:
    """12 hex digits over what makes energy figures comparable: CPU, core count, GPUs, driver."""
    parts = {
        "cpu": environment.cpu_model,
        "cpus": environment.cpu_count,
        "arch": platform.machine(),
        "gpus": sorted(g.name or "?" for g in environment.gpus),
        "driver": environment.driver_version,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def commit_label(commit: str | None, dirty: bool | None) -> str:
    """How a commit names a run: 8 hex digits, `-dirty` for uncommitted changes, `nogit` outside git."""
    return (commit or "nogit")[:8] + ("-dirty" if dirty else "")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:24] or "host"


@dataclass(frozen=True)
class StoredRun:
    name: str  # the directory name
    path: Path
    created_at: str
    fingerprint: str | None
    commit: str | None
    dirty: bool | None
    experiments: int
    saved_as: str | None  # the --llem-save / --llem-autosave name, if any
    completed: bool | None  # None: written before completion was recorded


def _unwritten_run(directory: Path) -> StoredRun:
    """A run directory with no report (its session ended within moments of starting): listed
    as interrupted, with nothing in it, dated by the directory itself."""
    try:
        created = datetime.fromtimestamp(directory.stat().st_mtime, timezone.utc)
    except OSError:
        created = datetime.fromtimestamp(0, timezone.utc)
    return StoredRun(
        name=directory.name,
        path=directory,
        created_at=created.isoformat(),
        fingerprint=None,
        commit=None,
        dirty=None,
        experiments=0,
        saved_as=None,
        completed=False,
    )


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs_dir = root / "runs"

    def fingerprint(self, environment: EnvironmentSnapshot) -> str:
        return machine_fingerprint(environment)

    def create_run_dir(
        self, commit: str | None, dirty: bool | None, when: datetime, name: str | None = None
    ) -> Path:
        """Create this session's directory exclusively and return it.

        With `name`: `runs/NAME`, or `NAME.2`, `NAME.3`, ... when taken. Without: a name unique
        across processes and machines. Raises StorageError naming the path when it cannot.
        """
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the runs directory {self.runs_dir}: {exc.strerror or exc}; "
                "point --llem-dir at a writable directory"
            ) from None
        if name is not None:
            check_run_name("--llem-save", name)
            candidates = (name if n == 1 else f"{name}.{n}" for n in range(1, _MAX_SUFFIX))
        else:
            stamp = when.strftime("%Y%m%dT%H%M%SZ")
            prefix = f"{stamp}_{commit_label(commit, dirty)}_{_host()}-{os.getpid()}"
            candidates = (f"{prefix}-{secrets.token_hex(3)}" for _ in range(100))
        for candidate in candidates:
            path = self.runs_dir / candidate
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                raise StorageError(
                    f"cannot create run directory {path}: {exc.strerror or exc}; "
                    "point --llem-dir at a writable directory"
                ) from None
        raise StorageError(f"no free run directory name under {self.runs_dir} for {name or 'this session'}")

    def list_runs(self) -> list[StoredRun]:
        runs: list[StoredRun] = []
        if not self.runs_dir.is_dir():
            return runs
        for directory in sorted(self.runs_dir.iterdir()):
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            if not (directory / REPORT_NAME).is_file():
                # a session killed before its first write: an interrupted run of 0 experiments
                runs.append(_unwritten_run(directory))
                continue
            try:
                report = read_report(directory)
            except (ReportError, ValueError):
                continue
            runs.append(
                StoredRun(
                    name=directory.name,
                    path=directory,
                    created_at=report.created_at,
                    fingerprint=report.fingerprint,
                    commit=report.environment.git_commit,
                    dirty=report.environment.git_dirty,
                    experiments=len(report.experiments),
                    saved_as=report.name,
                    completed=report.completed,
                )
            )
        return sorted(runs, key=lambda run: run.created_at)

    def resolve(self, reference: str, fingerprint: str | None = None, exclude: Path | None = None) -> Path:
        """A report path from a file or directory path, 'latest', or a stored run's name.

        A name means the newest complete run saved under it (`--llem-save`), a run directory
        of that name, or the newest complete run of that commit (`abcd1234`, `abcd1234-dirty`).
        'latest' is the newest complete run from this machine (`fingerprint`). `exclude` (the
        current session's directory) is never chosen.
        """
        excluded = exclude.resolve() if exclude is not None else None

        def usable(run: StoredRun) -> bool:
            return run.completed is not False and (excluded is None or run.path.resolve() != excluded)

        if reference == "latest":
            candidates = [
                run for run in self.list_runs() if usable(run) and fingerprint in (None, run.fingerprint)
            ]
            if not candidates:
                raise ReportError(
                    f"no complete stored run under {self.runs_dir} from this machine "
                    f"(fingerprint {fingerprint}) to compare with; store one first (any pytest-llem session)"
                )
            return candidates[-1].path / REPORT_NAME
        direct = Path(reference)
        if direct.is_file():
            return direct
        if direct.is_dir() and (direct / REPORT_NAME).is_file():
            return direct / REPORT_NAME
        if run_name_problem(reference) is None:
            runs = [run for run in self.list_runs() if usable(run)]
            for matches in (
                [run for run in runs if run.saved_as == reference],
                [run for run in runs if run.name == reference],
                [run for run in runs if commit_label(run.commit, run.dirty) == reference],
            ):
                if matches:
                    return matches[-1].path / REPORT_NAME
            named = self.runs_dir / reference / REPORT_NAME
            if named.is_file():  # a run that did not complete, named explicitly
                return named
        raise ReportError(
            f"{reference!r} is neither a report file, a run directory nor a stored run in "
            f"{self.runs_dir}; `llem list` shows the stored runs"
        )


def find_llem_dir(start: Path, name: str = ".llem") -> Path:
    """The nearest `name` directory at or above `start`, as git finds `.git`; `start/name`
    when there is none (so a new store is created where the user stands)."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / name).is_dir():
            return directory / name
    return start / name


class SessionRun:
    """This session's place in the store: its directory is created exclusively on first use
    (before the first experiment), so a session that measures nothing writes nothing.

    With `json_path` (`--llem-json PATH`) the report goes to that file and the timeseries
    beside it; nothing is written under the runs directory.
    """

    def __init__(
        self,
        store: RunStore,
        name: str | None = None,
        commit: str | None = None,
        dirty: bool | None = None,
        json_path: Path | None = None,
        revision: Callable[[], tuple[str | None, bool | None]] | None = None,
    ) -> None:
        """`revision` gives (commit, dirty) when the directory is made, instead of `commit` and
        `dirty` now: asking git costs a process, which a session that measures nothing (or
        `pytest --collect-only`) need not pay."""
        self.store, self.name, self.commit, self.dirty, self.json_path = store, name, commit, dirty, json_path
        self._revision = revision
        self._dir: Path | None = None
        self._created = False

    @classmethod
    def existing(cls, run_dir: Path, report_path: Path, store: RunStore) -> SessionRun:
        """A run directory created by another process (the xdist controller)."""
        run = cls(store, json_path=report_path if report_path.name != REPORT_NAME else None)
        run._dir = run_dir
        return run

    @property
    def created_dir(self) -> Path | None:
        """The directory, once it exists; None before (so nothing is created by asking)."""
        return self._dir

    def ensure(self, when: datetime) -> Path:
        """The run directory, created now if it does not exist yet (StorageError if it cannot be)."""
        if self._dir is None:
            if self.json_path is not None:
                self._dir = self.json_path.parent
                try:
                    self._dir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(
                        f"--llem-json={self.json_path}: cannot create {self._dir}: {exc.strerror or exc}"
                    ) from None
            else:
                if self._revision is not None:
                    self.commit, self.dirty = self._revision()
                    self._revision = None
                self._dir = self.store.create_run_dir(self.commit, self.dirty, when, self.name)
                self._created = True
        return self._dir

    def report_path(self, when: datetime) -> Path:
        return self.json_path or self.ensure(when) / REPORT_NAME

    def release_if_empty(self) -> None:
        """Remove the directory this session created if nothing was written into it (os.rmdir
        removes only an empty directory: a stored run can never be deleted here)."""
        if self._created and self._dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)
