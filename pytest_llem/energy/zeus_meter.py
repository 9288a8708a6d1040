"""The `zeus` meter: `zeus.monitor.ZeusMonitor` windows (optional extra `pytest-llem[zeus]`).

Zeus reads the same NVML energy counter as the `nvml` meter, at the window's two ends only,
and reports the difference as it is: a counter that resets mid-window becomes a negative (or
silently small) figure. So on GPU runs this meter also runs the shared `DevicePoller` (which
feeds the timeseries anyway) and checks each GPU's Zeus figure against it: a counter that went
backwards, a negative delta, or a delta beyond the board's power limit x window is rejected
with a warning and replaced by the integration of the polled power, never passed on.

Scope and selection: the GPUs in use for a GPU run, the CPU packages (and DRAM) for a CPU
run. Every check that can fail runs when the meter is created - Zeus must find the devices,
every GPU must have an energy counter (Zeus would otherwise integrate power in a helper
process we cannot check), and a probe window must open and close - so a board where Zeus
cannot measure is unavailable at selection, not at `stop()`. Zeus parses
`CUDA_VISIBLE_DEVICES` as integers; GPU UUIDs there are translated to NVML indices while
Zeus builds its device list.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import warnings as pywarnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_llem.energy.base import DeviceSet, EnergyReading
from pytest_llem.energy.nvml import counter_or_integrated, counter_windows, gpu_devices
from pytest_llem.hardware import clock as clocks
from pytest_llem.hardware import nvml_devices
from pytest_llem.hardware.sampler import DevicePoller
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.errors import DeviceLost, MeasurementError, MeterUnavailable
from pytest_llem.schema.results import EnergyInfo, MeasurementWarning

_window_ids = itertools.count()
ZEUS_WINDOW = "ZeusMonitor window"  # its GPU energy: the NVML counter over Zeus's window


class ZeusMeter:
    name = "zeus"
    measured = True

    def __init__(
        self, monitor: Any, gpus: list[nvml_devices.NvmlDevice], sample_hz: float, timeseries: bool
    ) -> None:
        self._monitor = monitor
        self._gpus = gpus
        self._limits_w = {d.label: d.power_limit_w() for d in gpus}
        counters = frozenset(d.label for d in gpus)
        self.poller = DevicePoller(gpus, sample_hz, timeseries=timeseries, counters=counters)
        self._window: str | None = None
        self._start_s = 0.0

    def start(self) -> None:
        self._window = f"llem-{next(_window_ids)}"
        self._start_s = clocks.current().now()
        try:
            self._monitor.begin_window(self._window, sync_execution=False)  # the experiment syncs
        except Exception as exc:  # Zeus wraps NVML/RAPL errors in its own types
            self._window = None
            raise MeasurementError(f"Zeus could not open a window: {exc}") from exc
        self.poller.start()

    def _end_window(self) -> Any:
        window, self._window = self._window, None
        with pywarnings.catch_warnings():
            # Zeus warns about zero energy in windows shorter than the counter period;
            # the short_window warning already says that in this tool's words
            pywarnings.simplefilter("ignore", UserWarning)
            return self._monitor.end_window(window, sync_execution=False)

    def stop(self) -> EnergyReading:
        try:
            samples = self.poller.stop()  # first: a lost GPU is reported in this tool's words
            end_s = clocks.current().now()  # Zeus reads its end counters right after this
            measurement = self._end_window()
        except DeviceLost as exc:
            self.close()
            raise MeasurementError(str(exc)) from exc
        except Exception as exc:
            self.close()
            raise MeasurementError(f"Zeus could not close its window: {exc}") from exc
        per_device: dict[str, float] = {}
        methods: dict[str, str] = {}
        warnings: list[MeasurementWarning] = []
        counters = counter_windows(self._gpus, {}, {}, samples)
        gpu_energy = getattr(measurement, "gpu_energy", None) or {}
        for device in self._gpus:
            label = device.label
            energy = counter_or_integrated(
                device,
                float(gpu_energy.get(device.cuda_index, float("nan"))),
                ZEUS_WINDOW,
                counters[label].went_backwards,
                self._limits_w[label],
                samples,
                self._start_s,
                end_s,
            )
            per_device[label], methods[label] = energy.joules, energy.method
            if energy.warning is not None:
                warnings.append(energy.warning)
        for kind in ("cpu", "dram"):
            for index, value in (getattr(measurement, f"{kind}_energy", None) or {}).items():
                if not value >= 0:  # RAPL deltas: no polled fallback to use
                    raise MeasurementError(
                        f"Zeus reported {value:.1f} J for {kind}{index} (a counter went backwards); "
                        "repeat the experiment or use --llem-energy=rapl"
                    )
                per_device[f"{kind}{index}"] = float(value)
                methods[f"{kind}{index}"] = ZEUS_WINDOW
        info = EnergyInfo(
            source="zeus",
            measured=True,
            method=", ".join(sorted(set(methods.values()))),
            assumptions={
                "zeus_window_time_s": float(getattr(measurement, "time", 0.0)),
                "per_device_method": methods,
            },
            per_device_j=per_device,
        )
        return EnergyReading(sum(per_device.values()), info, warnings, start_s=self._start_s, end_s=end_s)

    def close(self) -> None:
        if self._window is not None:
            window, self._window = self._window, None
            with contextlib.suppress(
                Exception
            ):  # abandoning a window on an error path must not hide that error
                self._monitor.end_window(window, sync_execution=False, cancel=True)
        self.poller.close()


def _import_zeus_monitor() -> Any:
    try:
        return importlib.import_module("zeus.monitor")
    except ImportError:
        raise MeterUnavailable(
            "zeus", "the zeus package is not installed", "pip install 'pytest-llem[zeus]'"
        ) from None


@contextmanager
def _numeric_visible_devices(gpus: list[nvml_devices.NvmlDevice]) -> Iterator[None]:
    """Zeus reads CUDA_VISIBLE_DEVICES as integers: while it builds its GPU list, spell the
    visible devices as NVML indices (same devices, same CUDA order)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or all(e.strip().isdigit() for e in visible.split(",") if e.strip()):
        yield
        return
    session = nvml_devices.open_session()
    devices = session.visible_devices() if session else []
    if any(d.nvml_index is None for d in devices) or not devices:
        raise MeterUnavailable(
            "zeus",
            f"CUDA_VISIBLE_DEVICES={visible!r} names devices NVML cannot number (MIG instances?)",
            "use --llem-energy=nvml, or integer GPU indices in CUDA_VISIBLE_DEVICES",
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(d.nvml_index) for d in devices)
    try:
        yield
    finally:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible


def _probe(monitor: Any) -> None:
    """Open and close one window now, so a monitor that cannot measure fails at selection."""
    key = f"llem-probe-{next(_window_ids)}"
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore", UserWarning)
        monitor.begin_window(key, sync_execution=False)
        monitor.end_window(key, sync_execution=False)


# where Zeus looks for RAPL (zeus.device.cpu.rapl: the host's powercap tree, or a container's
# bind mount of it)
ZEUS_RAPL_DIRS = (Path("/sys/class/powercap/intel-rapl"), Path("/zeus_sys/class/powercap/intel-rapl"))


def create(config: EnergyConfig, devices: DeviceSet) -> ZeusMeter:
    # a CPU run with no RAPL for Zeus to read: decided before importing Zeus, whose import costs
    # about a second and probes for AMD GPUs (logging an amdsmi warning) on such a machine
    if (
        not devices.uses_gpu
        and not os.environ.get("LLEM_POWERCAP_ROOT")
        and not any(path.exists() for path in ZEUS_RAPL_DIRS)
    ):
        raise MeterUnavailable(
            "zeus",
            "Zeus found no GPU and no RAPL CPU to measure (no /sys/class/powercap/intel-rapl)",
            "run on an NVIDIA/AMD GPU or bare-metal Linux with RAPL, or use --llem-energy=estimate",
        )
    monitor_module = _import_zeus_monitor()
    gpus: list[nvml_devices.NvmlDevice] = []
    try:
        if devices.uses_gpu:
            gpus = gpu_devices("zeus", devices)
            no_counter = [d.label for d in gpus if d.total_energy_mj() is None]
            if no_counter:
                raise MeterUnavailable(
                    "zeus",
                    f"{', '.join(no_counter)} has no readable energy counter (older than Volta?), where "
                    "Zeus integrates power in a helper process",
                    "use --llem-energy=nvml, which integrates polled power with a warning",
                )
        elif os.environ.get("LLEM_POWERCAP_ROOT"):
            # a simulated (or relocated) powercap tree: Zeus reads /sys/class/powercap itself
            # and would measure the real machine instead of the tree the rapl meter reads
            raise MeterUnavailable(
                "zeus",
                f"LLEM_POWERCAP_ROOT={os.environ['LLEM_POWERCAP_ROOT']} points the RAPL meters at "
                "another powercap tree, which Zeus cannot read",
                "use --llem-energy=rapl, or unset LLEM_POWERCAP_ROOT",
            )
        # Same scope as the other meters: the GPUs in use for a GPU run (Zeus would otherwise
        # add every CPU package), the CPU packages (and DRAM) for a CPU run.
        scope = (
            {"gpu_indices": list(devices.gpu_indices), "cpu_indices": []}
            if devices.uses_gpu
            else {"gpu_indices": []}
        )
        with _numeric_visible_devices(gpus):
            monitor = monitor_module.ZeusMonitor(**scope)
        if not (getattr(monitor, "gpu_indices", None) or getattr(monitor, "cpu_indices", None)):
            raise MeterUnavailable(
                "zeus",
                "Zeus found no GPU and no RAPL CPU to measure",
                "use --llem-energy=estimate on this machine",
            )
        _probe(monitor)
    except MeterUnavailable:
        raise
    except DeviceLost as exc:
        raise MeterUnavailable(
            "zeus", str(exc).split(";")[0], "reset the GPU or reboot, then rerun"
        ) from None
    except Exception as exc:  # Zeus raises its own errors for missing NVML/RAPL and bad boards
        raise MeterUnavailable(
            "zeus",
            f"Zeus cannot measure here ({type(exc).__name__}: {exc})",
            "check `python -m zeus.show_env`",
        ) from None
    return ZeusMeter(monitor, gpus, config.sample_hz, timeseries=config.sampler)
