"""The engine host: a child process that runs one engine, so a crash in native code ends
that process and not the session.

A native engine can die in ways Python cannot catch: a segfault in a kernel built for another
CPU, a C++ `abort()`, the kernel's OOM killer in a batch-size sweep. In the session's own
process any of these ends pytest, and with it every experiment still to run and the report.
Run in a host, the same death is one failed experiment (`pytest_llem.engines.isolated`, the
parent's side, turns it into `EngineCrashed`) and the next experiment gets a fresh host.

This module is the child's `main`: `python -m pytest_llem.engines.host ENGINE FD PARENT_PID`.
It builds the engine from the registry (built-in or entry point, exactly as the parent
would), answers one call at a time over the connection on file descriptor FD, and keeps the
engine's objects (loaded models, prepared batches) on its side: the parent holds `RemoteRef`s.

The wire, all pickled (`multiprocessing.connection`):
- parent -> child: `(method, args, forget)`: `forget` lists refs the parent dropped;
- child -> parent: `("progress", GenerationProgress)` after each engine step of a `generate`
  that asked for it, then `("ok", value)` or `("error", exception)`.
The child ignores SIGINT (Ctrl-C is the parent's to handle; it then ends the host) and dies
with its parent (`PR_SET_PDEATHSIG`), so no host outlives a session, even one killed outright.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import pickle
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from pytest_llem.engines.base import (
    GenerationProgress,
    InferenceBackend,
    LoadedModel,
    PreparedPrompts,
    observes_steps,
    schedules_requests,
)

# The calls a host answers: the `InferenceBackend` protocol, plus `tokenize` (the parent's
# stand-in for the loaded model's tokenizer).
CALLS = frozenset(
    {
        "version",
        "settings_problems",
        "resolve_model",
        "device_problems",
        "resolve_device",
        "gpu_indices",
        "init_device",
        "set_threads",
        "seed",
        "cache_key",
        "load",
        "release",
        "prepare",
        "generate",
        "tokenize",
        "parameter_count",
        "counted_flops",
        "synchronize",
    }
)
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RemoteRef:
    """An object that lives in the host (a loaded model, a prepared batch), by number."""

    id: int


@dataclass(frozen=True)
class HostInfo:
    """What the parent needs to know of the engine before its first call.

    `crash_hint` is the engine's own word on why it might die and what to do (the llama.cpp
    backend names an AMX build), asked while the host is alive, since after a crash nothing
    can be asked; it is attached to a crash by signal."""

    name: str
    exclusive: bool
    schedules_requests: bool
    observes_steps: bool
    crash_hint: str | None
    pid: int


@dataclass(frozen=True)
class LoadedSummary:
    """A loaded model as the parent sees it: everything of `LoadedModel` but the engine's
    objects, which stay in the host behind `ref`."""

    ref: RemoteRef
    device: str
    dtype: str
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    settings: dict[str, Any]


class RemoteError(Exception):
    """An exception from the host that could not cross the process boundary as itself
    (unpicklable): its type name and message, so nothing is lost."""


@dataclass
class _Objects:
    """The host's side of the refs: each object, and the loaded model it belongs to (a model's
    prepared batches go when it is released)."""

    items: dict[int, Any] = field(default_factory=dict)
    owner: dict[int, int] = field(default_factory=dict)
    next_id: int = 0

    def keep(self, value: Any, owner: RemoteRef | None = None) -> RemoteRef:
        self.next_id += 1
        self.items[self.next_id] = value
        if owner is not None:
            self.owner[self.next_id] = owner.id
        return RemoteRef(self.next_id)

    def get(self, ref: RemoteRef) -> Any:
        return self.items[ref.id]

    def drop(self, ref_id: int) -> None:
        self.items.pop(ref_id, None)
        self.owner.pop(ref_id, None)
        for dependent in [key for key, owner in self.owner.items() if owner == ref_id]:
            self.drop(dependent)


class _Host:
    """The engine and its objects, answering the parent's calls one at a time."""

    def __init__(self, backend: InferenceBackend, connection: Connection) -> None:
        self.backend = backend
        self.connection = connection
        self.objects = _Objects()

    def info(self) -> HostInfo:
        hint: Callable[[], str | None] | None = getattr(self.backend, "crash_hint", None)
        return HostInfo(
            name=self.backend.name,
            exclusive=bool(self.backend.exclusive),
            schedules_requests=schedules_requests(self.backend),
            observes_steps=observes_steps(self.backend),
            crash_hint=hint() if hint is not None else None,
            pid=os.getpid(),
        )

    def _prepared(self, prepared: PreparedPrompts) -> PreparedPrompts:
        return PreparedPrompts([self.objects.get(ref) for ref in prepared.batches], prepared.input_tokens)

    def answer(self, method: str, args: tuple[Any, ...]) -> Any:
        backend, objects = self.backend, self.objects
        if method == "load":
            loaded: LoadedModel = backend.load(*args)
            ref = objects.keep(loaded)
            return LoadedSummary(
                ref,
                loaded.device,
                loaded.dtype,
                tuple(loaded.eos_token_ids),
                loaded.pad_token_id,
                dict(loaded.settings),
            )
        if method == "release":
            (ref,) = args
            backend.release(objects.get(ref))
            objects.drop(ref.id)
            return None
        if method == "prepare":
            ref, prompts, batch_size, max_input_tokens = args
            prepared = backend.prepare(objects.get(ref), prompts, batch_size, max_input_tokens)
            batches = [objects.keep(batch, owner=ref) for batch in prepared.batches]
            return PreparedPrompts(batches, list(prepared.input_tokens))
        if method == "generate":
            ref, batch, max_new_tokens, fixed_length, observe = args
            extra = {"observer": self._send_progress} if observe else {}
            return backend.generate(
                objects.get(ref), objects.get(batch), max_new_tokens, fixed_length, **extra
            )
        if method == "tokenize":
            ref, text, add_special_tokens = args
            tokenizer = objects.get(ref).tokenizer
            return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        if method == "parameter_count":
            (ref,) = args
            return backend.parameter_count(objects.get(ref))
        if method == "counted_flops":
            ref, prepared, max_new_tokens, fixed_length = args
            return backend.counted_flops(
                objects.get(ref), self._prepared(prepared), max_new_tokens, fixed_length
            )
        return getattr(backend, method)(*args)

    def release_all(self) -> list[tuple[str, str]]:
        """Release every model still loaded, before the host exits: vLLM's engine core shuts
        down in its release. The session asks for this with the close, without releasing
        each model first, so the release runs while the session writes its report. A failure
        does not stop the others; each comes back as (the model's device, the error)."""
        failures = []
        for ref_id, value in list(self.objects.items.items()):
            if isinstance(value, LoadedModel):
                try:
                    self.backend.release(value)
                except Exception as exc:
                    failures.append((value.device, f"{type(exc).__name__}: {exc}"))
                self.objects.drop(ref_id)
        return failures

    def _send_progress(self, progress: GenerationProgress) -> None:
        self.connection.send(("progress", progress))

    def serve(self) -> None:
        """Answer calls until the parent closes the connection or says "close"."""
        while True:
            try:
                method, args, forget = self.connection.recv()
            except (EOFError, OSError):
                return  # the parent is gone or closed the host
            for ref_id in forget:
                self.objects.drop(ref_id)
            if method == "close":
                self.connection.send(("ok", self.release_all()))
                return
            try:
                if method not in CALLS:
                    raise ValueError(f"the engine host answers no call named {method!r}")
                reply: tuple[str, Any] = ("ok", self.answer(method, args))
            except Exception as exc:
                reply = ("error", portable(exc))
            self.connection.send(reply)


def portable(exc: BaseException) -> BaseException:
    """`exc` itself where it survives pickling, else a `RemoteError` with its type and text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RemoteError(f"{type(exc).__name__}: {exc}")
    return exc


def _die_with(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), so a host never
    outlives a session that was killed without a chance to close it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's close() and atexit still end it
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def main(argv: list[str]) -> int:
    engine, fd, parent_pid = argv[0], int(argv[1]), int(argv[2])
    _die_with(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()  # a fatal signal leaves the Python stack in the log the parent reads
    connection = Connection(fd)
    from pytest_llem.schema.registry import ENGINES

    try:
        host = _Host(ENGINES.load(engine)(), connection)
        info = host.info()
    except Exception as exc:
        connection.send(("error", portable(exc)))
        return 1
    connection.send(("ok", info))
    host.serve()
    # The session released every model before closing (vLLM's engine core is shut down in its
    # release): what is left is the interpreter's teardown of torch and friends, about a second
    # the session would wait for. Flush the log and leave.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    # run as the module's real name, so what it pickles is `pytest_llem.engines.host.HostInfo`
    # (the parent's class), not `__main__.HostInfo`
    from pytest_llem.engines import host as _named

    sys.exit(_named.main(sys.argv[1:]))
