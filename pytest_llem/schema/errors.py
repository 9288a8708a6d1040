"""Typed errors. Each one says what is wrong and how to fix it, in words a user can act on."""

from __future__ import annotations

from collections.abc import Iterable


class LlemError(Exception):
    """Base class of every error pytest-llem raises on purpose."""


class ConfigError(LlemError, ValueError):
    """An experiment setting is invalid: the message names the field, the value and what is allowed."""


class MeterUnavailable(LlemError):
    """An energy meter cannot be used here; `fix` says what would make it usable."""

    def __init__(self, meter: str, reason: str, fix: str) -> None:
        self.meter, self.reason, self.fix = meter, reason, fix
        super().__init__(f"energy meter '{meter}' is not available: {reason}. Fix: {fix}")


class PreFlightError(LlemError):
    """Every pre-flight problem of one (device, engine, model, meter) set, raised together once."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        lines = "; ".join(self.problems)
        super().__init__(f"pre-flight failed ({len(self.problems)} problem(s)): {lines}")


class ModelUnavailable(LlemError):
    """A model reference could not be resolved to loadable files."""


class ExperimentFailed(LlemError):
    """An experiment started but did not complete; the cause is kept for the report."""


class MeasurementError(LlemError):
    """Something failed inside an open measurement window (a poll, a counter, a lost device):
    the window has no trustworthy figure. Distinct from `MeterUnavailable`, which is decided
    before any window opens."""


class DeviceLost(LlemError):
    """A GPU stopped answering (NVML_ERROR_GPU_IS_LOST and kin): it fell off the bus or needs
    a reset. Never reported as "not supported"."""

    def __init__(self, device: str, detail: str) -> None:
        self.device, self.detail = device, detail
        super().__init__(
            f"{device} is lost ({detail}); check `nvidia-smi` and `dmesg`, reset or reboot, then rerun"
        )


class EngineCrashed(LlemError):
    """The process running an engine died (a signal such as SIGSEGV, SIGABRT or the OOM
    killer's SIGKILL, or an exit) while it served `call`. Only an isolated engine can report
    this: an in-process one takes the session with it. `step` is the lifecycle's step at the
    time, filled in by whoever knows it (`with_step`)."""

    def __init__(
        self,
        engine: str,
        how: str,
        call: str,
        frame: str | None = None,
        hint: str | None = None,
        log: str | None = None,
        step: str | None = None,
    ) -> None:
        self.engine, self.how, self.call, self.frame = engine, how, call, frame
        self.hint, self.log, self.step = hint, log, step
        where = f" in {step}" if step else ""
        detail = f"during its {call!r} call" + (f", at {frame}" if frame else "")
        parts = [f"{engine} died with {how}{where} ({detail})"]
        if hint:
            parts.append(f"likely cause: {hint}")
        if log:
            parts.append(f"the engine's log: {log}")
        parts.append("the next experiment starts a fresh engine process")
        super().__init__("; ".join(parts))

    def with_step(self, step: str) -> EngineCrashed:
        return EngineCrashed(self.engine, self.how, self.call, self.frame, self.hint, self.log, step)

    def __reduce__(self) -> tuple[object, ...]:
        return (EngineCrashed, (self.engine, self.how, self.call, self.frame, self.hint, self.log, self.step))
