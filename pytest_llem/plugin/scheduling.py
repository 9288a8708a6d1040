"""`--dist loadgroup` that works on pytest 9.2: one worker per group, groups read from files.

pytest-xdist's loadgroup scheduler groups tests by a `@group` suffix its workers append to each
node id during collection; pytest 9.2 made node ids structured, so that assignment no longer
changes the id, and every test becomes a group of its own. Here the workers write each test's
group (its `xdist_group` marks, or for experiment tests its model: `plugin.slots.group_by_model`)
to `<run>/workers/<id>.groups.json`, and the controller's scheduler reads them when it splits
the collected tests into work units, all workers having collected by then. A test found in no
file falls back to xdist's own rule (the suffix, else the test itself).

A worker that crashes mid-test: xdist's scope schedulers put the whole unfinished work unit
back in the queue, the test that killed the worker included, so it runs again, kills the next
worker, and so on until xdist runs out of restarts. Here the crashed test counts as done (xdist
reports it as failed, and pytest-llem records its experiment as failed); the rest of its
group is run by another worker.

Imported only on an xdist controller under `--dist loadgroup`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling

GROUPS_GLOB = "*.groups.json"


class ModelGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist is untyped here
    def __init__(self, config: pytest.Config, log: Any, directory: Path) -> None:
        super().__init__(config, log)
        self._directory = directory
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:
            self._groups = {}
            for path in sorted(self._directory.glob(GROUPS_GLOB)):
                try:
                    self._groups.update(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
        group = self._groups.get(nodeid)
        return group if group is not None else str(super()._split_scope(nodeid))

    def remove_node(self, node: Any) -> str | None:
        """LoadScopeScheduling.remove_node, except that the test being run when the node
        crashed is not queued again."""
        workload = self.assigned_work.pop(node)
        if not self._pending_of(workload):
            return None
        crashitem: str = next(
            str(nodeid) for unit in workload.values() for nodeid, completed in unit.items() if not completed
        )
        for scope, unit in workload.items():
            if crashitem in unit:
                unit[crashitem] = True
            if not all(unit.values()):
                self.workqueue[scope] = unit
        for other in self.assigned_work:
            self._reschedule(other)
        return crashitem
