"""Slots under pytest-xdist: each worker runs its experiments on devices no other worker uses.

Experiments that run at once corrupt each other's figures when they share a device: a GPU's
energy counter and a CPU core's time belong to whoever runs there. So the controller splits
the machine before any worker starts:

- GPUs (with `--llem-gpus-per-worker N`): worker k gets the k-th N of the caller's visible
  devices - the entries of its `CUDA_VISIBLE_DEVICES` (indexes or UUIDs), or every NVML board
  by UUID where the variable is unset, never `range(device_count())` - set as the worker's
  `CUDA_VISIBLE_DEVICES` through its execnet spec, so the variable is in place before the
  worker imports anything, let alone initialises CUDA. `-n auto` is one worker per slot.
- Cores (always): worker k gets the k-th equal share of the cores the caller may use,
  applied (every thread's affinity, and `num_threads` below every user setting) when the
  worker's first experiment starts, so a suite without experiments runs as it always did.

A worker whose slot cannot be made (more workers than cores, fewer GPUs than slots, GPUs
visible but no `--llem-gpus-per-worker`) runs its other tests; each experiment test fails at
setup with the one line that says which option to change. Each result records its slot
(`SlotRecord`); `plugin.ledger` adds how many experiments overlapped it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llem.hardware.slots import (
    GPUS_FLAG,
    Slot,
    pin_all_threads,
    plan_slots,
    usable_cores,
    visible_gpus,
)
from pytest_llem.plugin.ledger import LEDGER_DIR
from pytest_llem.plugin.session_options import session_options
from pytest_llem.plugin.state import SLOT_KEY

if TYPE_CHECKING:
    from pytest_llem.plugin.ledger import LedgerEntry
    from pytest_llem.plugin.state import LlemState
    from pytest_llem.plugin.worker_progress import WorkersDisplay
    from pytest_llem.schema.config import ExperimentConfig
    from pytest_llem.schema.results import ExperimentResult, SlotRecord

SLOT_INPUT = "llem_slot"  # the workerinput key that carries a worker's slot
MAX_GPUS_PER_WORKER = 64


def gpus_per_worker(config: pytest.Config) -> int | None:
    """`--llem-gpus-per-worker` (or its ini twin), checked; None when not given."""
    value = session_options(config).gpus_per_worker
    if value is not None and not 0 <= value <= MAX_GPUS_PER_WORKER:
        raise pytest.UsageError(
            f"{GPUS_FLAG}={value} is invalid: expected 0 to {MAX_GPUS_PER_WORKER} GPUs per xdist worker "
            f"(0 for CPU-only experiments), e.g. {GPUS_FLAG}=1"
        )
    return int(value) if value is not None else None


def auto_workers(config: pytest.Config) -> int | None:
    """`-n auto` with GPU slots: one worker per slot; None leaves xdist's default (CPU count)."""
    per_worker = gpus_per_worker(config)
    if not per_worker:
        return None
    from pytest_llem.plugin.simulation import simulated_gpu_count

    # xdist asks before pytest_configure, so before LLEM_SIMULATED_GPUS's boards are installed
    simulated = simulated_gpu_count()
    if simulated is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        return max(1, simulated // per_worker)
    return max(1, len(visible_gpus()) // per_worker)


class SlotController:
    """Registered on the xdist controller: plans the slots, puts each worker's GPUs in its
    environment and its slot in its workerinput, and records an experiment that a crashed
    worker left unfinished."""

    def __init__(self, state: LlemState) -> None:
        self._state = state
        self._per_worker = gpus_per_worker(state.config)
        self._by_spec: dict[int, Slot] = {}  # id(execnet spec) -> slot: a restarted worker keeps it
        self._display: WorkersDisplay | None = None  # the workers' stages on the status line

    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Sequence[Any]) -> None:
        plan = plan_slots([str(spec.id) for spec in specs], self._per_worker, visible_gpus(), usable_cores())
        for spec, slot in zip(specs, plan, strict=True):
            self._by_spec[id(spec)] = slot
            if slot.gpus is not None:
                spec.env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)  # set before the worker starts

    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        """Once the first worker has collected (the progress renderer exists by then): show
        the workers' stages on the controller's status line."""
        if self._display is not None:
            return
        from pytest_llem.plugin.worker_progress import WorkersDisplay

        progress = self._state.config.pluginmanager.get_plugin("llem-progress")
        tracker = getattr(progress, "tracker", None)
        if tracker is None:
            return
        self._display = WorkersDisplay(tracker, self._state.run_dir / LEDGER_DIR)
        self._display.start()

    @pytest.hookimpl(tryfirst=True)  # before the summary is written
    def pytest_sessionfinish(self) -> None:
        display, self._display = self._display, None
        if display is not None:
            display.stop()

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """`--dist loadgroup`: groups read from the workers' collection (see group_by_model)."""
        if getattr(config.option, "dist", None) != "loadgroup":
            return None
        from pytest_llem.plugin.scheduling import ModelGroupScheduling

        return ModelGroupScheduling(config, log, self._state.run_dir / LEDGER_DIR)

    def pytest_configure_node(self, node: Any) -> None:
        slot = self._by_spec.get(id(node.gateway.spec))
        if slot is not None:
            node.workerinput[SLOT_INPUT] = Slot(
                str(node.gateway.id), slot.workers, slot.gpus, slot.cores, slot.problem
            ).to_input()

    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        """The experiment a killed worker was running, recorded as failed with the reason."""
        from pytest_llem.plugin.ledger import crashed_experiment
        from pytest_llem.plugin.report import attach_results

        node = getattr(report, "node", None)
        worker = str(node.gateway.id) if node is not None else ""
        slot_data = getattr(node, "workerinput", {}).get(SLOT_INPUT) if node is not None else None
        slot = Slot.from_input(slot_data) if slot_data else None
        result = crashed_experiment(self._state.run_dir, worker, crashitem, str(report.longrepr))
        if result is not None:
            if slot is not None:
                result.slot = slot_record(slot, None, resolve_gpus=False)  # a record of our own making
            attach_results(report, [result], outcome="failed: the worker crashed")


def enter_slot(state: LlemState) -> None:
    """At an experiment test's setup on a worker: fail it with the slot's problem, or pin the
    worker to its cores (first time only) and make them the default thread count."""
    slot_state = state.config.stash.get(SLOT_KEY, None)
    if slot_state is None:
        return
    slot = slot_state.slot
    if slot.problem:
        pytest.fail(slot.problem, pytrace=False)
    if slot.cores and not slot_state.pinned:  # A/B on the slot pinned it already
        pin_all_threads(set(slot.cores))
        slot_state.pinned = True


def slot_problem(slot: Slot | None, config: ExperimentConfig) -> str | None:
    """Why `config` does not fit this worker's GPU slot (a device past it, or a tensor-parallel
    size larger than it); None when it fits or GPUs are not split. Checked before the engine's
    own pre-flight, whose message could not name the option to change."""
    if slot is None or slot.gpus is None:
        return None
    index = config.device.split(":", 1)[1] if config.device.startswith("cuda:") else ""
    tensor_parallel = config.passthrough_kwargs.get("tensor_parallel_size", 1)
    parallel = (
        tensor_parallel if isinstance(tensor_parallel, int) and not isinstance(tensor_parallel, bool) else 1
    )
    needed = max(int(index) + 1 if index.isdigit() else 0, parallel if config.device != "cpu" else 0)
    if needed <= len(slot.gpus):
        return None
    what = f"device={config.device!r}" + (f" with tensor_parallel_size={parallel}" if parallel > 1 else "")
    return (
        f"{what} needs {needed} GPU(s); this xdist worker's slot has {len(slot.gpus)} "
        f"({GPUS_FLAG}={len(slot.gpus)}): raise {GPUS_FLAG} to {needed}"
    )


def slot_record(slot: Slot, concurrent: int | None, resolve_gpus: bool = True) -> SlotRecord:
    """The slot as a result records it: the boards' NVML indexes and UUIDs, read in the worker
    (the controller, recording a crashed worker's experiment, keeps the entries only)."""
    from pytest_llem.hardware import nvml_devices
    from pytest_llem.schema.results import SlotRecord

    indexes: list[int | None] = []
    uuids: list[str | None] = []
    if slot.gpus and resolve_gpus:
        session = nvml_devices.open_session()
        for device in session.visible_devices() if session is not None else []:
            indexes.append(device.nvml_index)
            uuids.append(device.uuid())
    return SlotRecord(
        worker=slot.worker,
        workers=slot.workers,
        cuda_visible_devices=None if slot.gpus is None else ",".join(slot.gpus),
        gpu_indexes=indexes,
        gpu_uuids=uuids,
        cores=list(slot.cores),
        concurrent_experiments=concurrent,
    )


def stamp_slot(result: ExperimentResult, slot: Slot, entry: LedgerEntry | None) -> ExperimentResult:
    """`result` with its slot and concurrency, and a `shared_node` warning where its energy
    covers the whole node and other experiments ran meanwhile."""
    from pytest_llem.schema import quality

    concurrent = entry.overlaps() if entry is not None else None
    warnings = list(result.warnings)
    energy = result.energy
    if concurrent and energy is not None and quality.node_wide(energy.source, list(energy.per_device_j)):
        warning = quality.shared_node(energy.source, concurrent)
        if warning is not None:
            warnings.append(warning)
    stamped = result.model_copy()  # then typed assignments: mypy checks each field
    stamped.slot = slot_record(slot, concurrent)
    stamped.warnings = warnings
    return stamped


MODEL_GROUP_PREFIX = "llem-model-"


def model_of(item: pytest.Item, options_layer: Mapping[str, Any]) -> str:
    """The model a test's experiments load, as far as collection can tell: a `model`
    parameter, else the marker's, else the options', else the built-in default."""
    from pytest_llem.plugin.markers import marker_settings
    from pytest_llem.schema.config import ExperimentConfig

    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    for source in (params, marker_settings(item), options_layer):
        if isinstance(source.get("model"), str):
            return str(source["model"])
    return str(ExperimentConfig.model_fields["model"].default)


GROUPS_SUFFIX = ".groups.json"


def _group_name(item: pytest.Item) -> str | None:
    names = sorted(
        {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
    )
    return "_".join(names) if names else None


def group_by_model(items: Sequence[pytest.Item], state: LlemState) -> None:
    """Under `--dist loadgroup`, on a worker: each experiment test without an `xdist_group`
    of its own joins its model's group, so the tests of one model run on one worker and load
    it once; every test's group is written for the controller's scheduler
    (`ModelGroupScheduling`), because xdist's own way (a `@group` suffix on the node id) has
    no effect since pytest 9.2 made node ids structured."""
    for item in items:
        if "llem" in getattr(item, "fixturenames", ()) and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(MODEL_GROUP_PREFIX + model_of(item, state.options_layer)))
    groups = {item.nodeid: name for item in items if (name := _group_name(item)) is not None}
    if state.slot is not None:
        directory = state.run_dir / LEDGER_DIR
        directory.mkdir(exist_ok=True)
        (directory / f"{state.slot.worker}{GROUPS_SUFFIX}").write_text(json.dumps(groups))


def experiment_id(item: pytest.Item) -> str:
    """The test id results carry: the node id without the `@group` suffix that xdist's
    loadgroup adds on workers, so a result's id is the same with -n 0, -n N or a shard."""
    name = _group_name(item)
    return item.nodeid.removesuffix("@" + name) if name else item.nodeid
