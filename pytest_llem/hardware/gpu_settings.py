"""GPU power limits and locked graphics clocks as experiment settings, set through NVML.

Running the same model at a lower power limit is the largest energy saving the field reports,
so `power_limit_w` and `gpu_clocks_mhz` are settings like `batch_size`: set on the
experiment's GPUs after the idle baseline and before warmup, and put back as they were on
every way out of the experiment (its end, a failure, an exception, Ctrl-C, SIGTERM), because a board
left capped would silently slow every later job on the machine. A restore that fails is
reported loudly (a warning pytest prints, and a line on stderr) with the command that fixes it.

Setting either needs root (or CAP_SYS_ADMIN); pre-flight finds out by setting the current
power limit to itself, which changes nothing, and names the fix when NVML says no.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pytest_llem.hardware.nvml_devices import NvmlDevice, SettingRefused
from pytest_llem.schema.errors import DeviceLost

PERMISSION_FIX = "run as root (or with CAP_SYS_ADMIN), or set it beforehand with sudo nvidia-smi"


class GpuSettingError(Exception):
    """A setting NVML refused, in one line that names the device, the setting and the fix."""


def _change(what: str, setter: Callable[..., None], *args: object) -> None:
    """Run one NvmlDevice setter; a refusal becomes GpuSettingError naming `what` and the fix."""
    try:
        setter(*args)
    except SettingRefused as exc:
        if exc.permission:
            raise GpuSettingError(f"{exc.label}: {what} needs permission: {PERMISSION_FIX}") from None
        raise GpuSettingError(f"{exc.label}: {what} failed: NVML says {exc.reason}") from None


def setting_problems(
    devices: list[NvmlDevice], power_limit_w: float | None, gpu_clocks_mhz: int | None
) -> list[str]:
    """Pre-flight: what stops these settings, each in one line with its fix."""
    if power_limit_w is None and gpu_clocks_mhz is None:
        return []
    if not devices:
        what = "power_limit_w" if power_limit_w is not None else "gpu_clocks_mhz"
        return [f"{what} is a GPU setting, but the experiment runs on no NVIDIA GPU; drop it for CPU runs"]
    problems = []
    for device in devices:
        if power_limit_w is not None:
            allowed = device.power_limit_range_w()
            if allowed is not None and not allowed[0] <= power_limit_w <= allowed[1]:
                problems.append(
                    f"power_limit_w={power_limit_w:g}: {device.label} accepts {allowed[0]:g}-{allowed[1]:g} W; "
                    "choose a limit in that range"
                )
        current = device.power_limit_w()
        if current is None:
            problems.append(
                f"{device.label}: NVML cannot read its power limit, so it cannot be set and restored"
            )
            continue
        try:  # the current limit, set again: changes nothing, and says whether we may
            _change("setting the power limit", device.set_power_limit_w, current)
        except (GpuSettingError, DeviceLost) as exc:
            problems.append(str(exc))
    return problems


@dataclass
class AppliedSettings:
    """What was changed, to put back: each board's previous limit, and the boards whose clocks
    were locked."""

    previous_limits_w: dict[str, tuple[NvmlDevice, float]] = field(default_factory=dict)
    locked: list[NvmlDevice] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.previous_limits_w or self.locked)

    @contextlib.contextmanager
    def terminate_as_interrupt(self) -> Iterator[None]:
        """While settings are changed, SIGTERM ends the experiment the way Ctrl-C does (a
        KeyboardInterrupt), so the restore in the caller's `finally` runs: Slurm's scancel and
        a job's time limit send SIGTERM (then SIGKILL after KillWait, 30 s by default).
        Installed only from the main thread, which alone may set signal handlers; the
        previous handler is put back after."""
        if not self.changed or threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum} (SIGTERM) while GPU settings were changed")

        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def restore(self) -> list[str]:
        """Put every board back; never raises. Returns what could not be restored, each also
        reported as a warning and on stderr, since a board left capped slows every later job."""
        failures = []
        for label, (device, watts) in self.previous_limits_w.items():
            try:
                _change("restoring the power limit", device.set_power_limit_w, watts)
            except (GpuSettingError, DeviceLost) as exc:  # a lost board cannot be put back either
                failures.append(
                    f"{exc}; restore it with: sudo nvidia-smi -i {label.removeprefix('gpu')} -pl {watts:g}"
                )
        for device in self.locked:
            try:
                _change("unlocking the clocks", device.unlock_clocks)
            except (GpuSettingError, DeviceLost) as exc:  # a lost board cannot be put back either
                failures.append(
                    f"{exc}; unlock with: sudo nvidia-smi -i {device.label.removeprefix('gpu')} -rgc"
                )
        self.previous_limits_w.clear()
        self.locked.clear()
        for failure in failures:
            message = f"pytest-llem could not restore a GPU setting: {failure}"
            print(message, file=sys.stderr)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return failures


def apply_settings(
    devices: list[NvmlDevice], power_limit_w: float | None, gpu_clocks_mhz: int | None
) -> AppliedSettings:
    """Set the limit and lock the clocks on every device; on a failure, whatever was already
    set is restored before the error propagates."""
    applied = AppliedSettings()
    try:
        for device in devices:
            if power_limit_w is not None:
                previous = device.power_limit_w()
                if previous is None:
                    raise GpuSettingError(
                        f"{device.label}: NVML cannot read its power limit to restore it later"
                    )
                _change("setting the power limit", device.set_power_limit_w, power_limit_w)
                applied.previous_limits_w[device.label] = (device, previous)
            if gpu_clocks_mhz is not None:
                _change("locking the clocks", device.lock_clocks_mhz, gpu_clocks_mhz)
                applied.locked.append(device)
    except BaseException:
        applied.restore()
        raise
    return applied
