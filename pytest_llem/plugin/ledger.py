"""The workers' ledger: when each experiment of an xdist session started and ended.

Each worker appends one JSON line when an experiment starts (its test id and settings) and
one when it ends, to `<run dir>/workers/<worker id>.jsonl` (one writer per file; each line is
one `write` to a file opened for appending, so a reader never sees half a line from a live
writer). Two things are read back from it:

- how many experiments ran at the same time as a finished one: itself plus the most
  experiments of other workers running at one instant of its span (one still running
  counts), recorded as `slot.concurrent_experiments`, so a node-wide figure can say it was
  shared;
- after a worker crashed (killed, out of memory), the experiment it had started and not
  ended, which the controller records as failed with the reason; the ledger is the only
  place that knows, because the worker died before it could report anything.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the records load with the first experiment, not with pytest's start-up
    from pytest_llem.schema.config import ExperimentConfig
    from pytest_llem.schema.results import ExperimentResult

LEDGER_DIR = "workers"


def _append(path: Path, event: dict[str, object]) -> None:
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _events(path: Path) -> list[dict[str, object]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # a line cut by a crash mid-write: the rest still counts
            continue
    return events


def _spans(events: list[dict[str, object]]) -> list[tuple[float, float]]:
    """(start, end) of each experiment in one worker's file; one still running ends at +inf."""
    spans, started = [], None
    for event in events:
        if event.get("event") == "start":
            started = float(str(event["t"]))
        elif event.get("event") == "end" and started is not None:
            spans.append((started, float(str(event["t"]))))
            started = None
    if started is not None:
        spans.append((started, float("inf")))
    return spans


@dataclass
class LedgerEntry:
    """One experiment's start line; `end()` writes its end line, `overlaps()` counts."""

    ledger: WorkerLedger
    started: float
    ended: float | None = None

    def end(self) -> None:
        """Write the end line, once (an experiment that raised ends here too)."""
        if self.ended is None:
            self.ended = time.time()
            _append(self.ledger.path, {"event": "end", "t": self.ended})

    def overlaps(self) -> int:
        """The most experiments that ran at one instant while this one ran, itself included
        (at most the worker count: each worker runs one experiment at a time)."""
        self.end()
        assert self.ended is not None
        changes: list[tuple[float, int]] = []
        for path in self.ledger.path.parent.glob("*.jsonl"):
            if path == self.ledger.path:
                continue
            for start, end in _spans(_events(path)):
                if start < self.ended and end > self.started:
                    changes += [(max(start, self.started), 1), (min(end, self.ended), -1)]
        running = most = 0
        for _, change in sorted(changes):  # at one instant an end (-1) sorts before a start
            running += change
            most = max(most, running)
        return 1 + most


class WorkerLedger:
    def __init__(self, run_dir: Path, worker: str) -> None:
        directory = run_dir / LEDGER_DIR
        directory.mkdir(exist_ok=True)
        self.path = directory / f"{worker}.jsonl"

    def start(self, nodeid: str, config: ExperimentConfig) -> LedgerEntry:
        started = time.time()
        _append(
            self.path,
            {"event": "start", "t": started, "nodeid": nodeid, "config": config.model_dump(mode="json")},
        )
        return LedgerEntry(self, started)


def crashed_experiment(run_dir: Path, worker: str, nodeid: str, reason: str) -> ExperimentResult | None:
    """The failed result of the experiment `worker` started for `nodeid` and never ended;
    None when it had none running (it crashed outside an experiment)."""
    path = run_dir / LEDGER_DIR / f"{worker}.jsonl"
    events = _events(path)
    last = events[-1] if events else {}
    started = str(last.get("nodeid"))
    # xdist's crash report names the node id, with its `@group` suffix under loadgroup
    if last.get("event") != "start" or not (nodeid == started or nodeid.startswith(started + "@")):
        return None
    _append(path, {"event": "end", "t": time.time(), "crashed": True})  # it overlaps nothing later
    from pytest_llem.schema.config import ExperimentConfig
    from pytest_llem.schema.results import ExperimentResult

    config = ExperimentConfig.model_validate(events[-1]["config"])
    result = ExperimentResult(
        nodeid=started,
        status="error",
        error=f"the xdist worker running this experiment died before it ended ({reason}); "
        "results finished before it are kept",
        config=config,
        config_hash=config.config_hash(),
    )
    return result
