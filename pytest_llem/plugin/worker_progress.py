"""Live progress under pytest-xdist: every worker's stage on the controller's one status line.

Workers have no terminal, and the controller runs no test. So each worker writes its current
status to `<run dir>/workers/<worker id>.status` as the lifecycle reports it (a small JSON
file, replaced atomically, removed between experiments), and the controller reads them once a
second and shows them together through its own renderer (the live line on a terminal,
throttled `[llem]` lines in a CI log):

    [llem] gw0 test_a[1] | repeat 1/3 | 4 s · gw1 test_b | warmup 2/5 | 1 s

Elapsed seconds are computed by the controller from the stage's start on the monotonic clock
the workers share with it (`time.perf_counter` is CLOCK_MONOTONIC on Linux), so they keep
counting between updates.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llem.hardware.clock import PeriodicThread
from pytest_llem.plugin.ledger import LEDGER_DIR
from pytest_llem.plugin.progress import PREFIX, Status, Tracker, describe

if TYPE_CHECKING:
    from pytest_llem.plugin.state import LlemState

SUFFIX = ".status"
SEPARATOR = " · "


class StatusFile(Tracker):
    """A worker's tracker: its status, written where the controller reads it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def begin_experiment(self, label: str, index: int, count: int | None) -> None:
        super().begin_experiment(label, index, count)
        self._write()

    def end_experiment(self) -> None:
        super().end_experiment()
        self.path.unlink(missing_ok=True)

    def _changed(self) -> None:
        self._write()

    def _write(self) -> None:
        with self._lock:
            status = self.status
        if status is None:
            return
        temporary = self.path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(asdict(status)))
            os.replace(temporary, self.path)
        except OSError:  # progress is a courtesy: a full disk must not fail the experiment
            return


def workers_line(directory: Path, now: float) -> str | None:
    """Every running worker's status on one line, by worker id; None when none runs."""
    parts = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            status = Status(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # between a worker's writes: next second
            continue
        text = describe(status, now).removeprefix(PREFIX).strip()
        parts.append(f"{path.name.removesuffix(SUFFIX)} {text}")
    return f"{PREFIX} {SEPARATOR.join(parts)}" if parts else None


class WorkersDisplay:
    """The controller's side: reads the workers' files once a second into its tracker."""

    def __init__(self, tracker: Tracker, directory: Path, period_s: float = 1.0) -> None:
        self._tracker = tracker
        self._directory = directory
        self._thread = PeriodicThread(period_s, self.refresh, "llem-workers-progress")

    def refresh(self) -> None:
        self._tracker.show(workers_line(self._directory, self._tracker.clock()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()
        self._tracker.show(None)


def worker_tracker(state: LlemState) -> StatusFile | None:
    """A worker's tracker, where its slot names it; None outside xdist slots."""
    if state.slot is None:
        return None
    directory = state.run_dir / LEDGER_DIR
    directory.mkdir(exist_ok=True)
    return StatusFile(directory / f"{state.slot.worker}{SUFFIX}")
