"""An engine run in its own process: `IsolatedBackend` is the `InferenceBackend` the
lifecycle drives, forwarding every call to an engine host (`pytest_llem.engines.host`).

Why a process: a native engine can die (SIGSEGV in a kernel built for another CPU, SIGABRT,
SIGKILL from the OOM killer), and in-process that ends the session with every experiment after
it and the report. Here the death of the host is an `EngineCrashed` naming the signal, the call
and the Python frame the host was in; the lifecycle records the experiment as `error` with the
step it was at, and the next call starts a fresh host.

The host lives as long as the session's cache of that engine's models: one host per engine,
started on the first call (pre-flight), holding every model of that engine the session loaded.
The meter window still brackets exactly the generation: the lifecycle's `synchronize` and
`generate` are calls into the host that return when the host's work is done. Progress steps
stream back while the host generates, so the phase recorder reads the meter within one message
of the step (about 0.1 ms) instead of inside the engine's thread; the engine is not held up by
the read.

The host's stdout and stderr go to a log file (beside the report when the session has a
directory): engine libraries print there, and a fatal signal leaves the Python stack there,
whose innermost frame the crash message quotes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llem.datasets import PromptSet
from pytest_llem.engines.base import (
    LoadedModel,
    LoadSpec,
    ParameterCount,
    PreparedPrompts,
    ProgressObserver,
    RequestOutput,
)
from pytest_llem.engines.host import HostInfo, LoadedSummary, RemoteRef
from pytest_llem.engines.models import ResolvedModel
from pytest_llem.schema.errors import EngineCrashed

if TYPE_CHECKING:
    from pytest_llem.schema.config import ExperimentConfig

# How long a host may take to exit once asked (vLLM's engine core shuts down in its release,
# before this), and to be reaped after its connection broke, before it is killed.
CLOSE_TIMEOUT_S = 30.0
REAP_TIMEOUT_S = 10.0

_LIVE_HOSTS: weakref.WeakSet[_Host] = weakref.WeakSet()


@atexit.register
def _end_live_hosts() -> None:
    """A session that never closed its engines (an interpreter exiting on an error) still
    leaves no host behind."""
    for host in list(_LIVE_HOSTS):
        host.kill()


def _child_pythonpath() -> str:
    """The parent's import path, so the host imports exactly what the parent would (a
    test's conftest directory, an engine package installed in a path added at run time)."""
    entries = [entry for entry in sys.path if entry and os.path.isdir(entry)]
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*entries, *([inherited] if inherited else [])])


class _Host:
    """One running host process and its end of the connection."""

    def __init__(self, engine: str, log_path: Path) -> None:
        self.engine = engine
        self.log_path = log_path
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": _child_pythonpath(), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest_llem.engines.host",
                    engine,
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        theirs.close()
        self.connection = Connection(ours.detach())
        self.close_requested = False
        _LIVE_HOSTS.add(self)

    def exit_status(self) -> int | None:
        """The host's exit status once it has ended (waiting a little: its connection can
        break a moment before the kernel reports the death); None while it runs on."""
        try:
            return self.process.wait(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None

    def request_close(self) -> None:
        """Ask the host to release its models and exit, without waiting for it."""
        if not self.close_requested:
            self.close_requested = True
            with contextlib.suppress(OSError):
                self.connection.send(("close", (), ()))

    def close(self) -> list[tuple[str, str]]:
        """Ask the host to exit (unless asked already), wait for its answer and its end, then
        make sure it has ended. Returns the models it failed to release: (device, error)."""
        self.request_close()
        failures: list[tuple[str, str]] = []
        with contextlib.suppress(OSError, EOFError):
            if self.connection.poll(CLOSE_TIMEOUT_S):
                kind, value = self.connection.recv()
                if kind == "ok" and value:
                    failures = list(value)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=CLOSE_TIMEOUT_S)
        self.kill()
        return failures

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self.connection.close()
        _LIVE_HOSTS.discard(self)


def _signal_name(status: int) -> str:
    if status < 0:
        try:
            return signal.Signals(-status).name
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"


def _last_frame(log_path: Path) -> str | None:
    """The innermost Python frame of the host's fatal-error dump (faulthandler writes
    "File "...", line N in name", most recent call first), shortened to its package path."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if line.startswith("Fatal Python error")]
    if not starts:
        return None
    for line in lines[starts[-1] :]:
        text = line.strip()
        if text.startswith('File "'):
            path, _, rest = text[len('File "') :].partition('"')
            parts = Path(path).parts
            short = "/".join(parts[-2:]) if len(parts) >= 2 else path
            return f"{short}{rest.replace(', line ', ':', 1)}"
    return None


class RemoteTokenizer:
    """The loaded model's tokenizer, called in the host: transformers' call signature, which is
    all the lifecycle asks of it (synthetic prompts are cut from its token stream)."""

    def __init__(self, backend: IsolatedBackend, ref: RemoteRef) -> None:
        self._backend, self._ref = backend, ref

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids: list[int] = self._backend._call("tokenize", self._ref, text, add_special_tokens)
        return {"input_ids": ids}


@dataclass
class RemoteLoaded(LoadedModel):
    """A model loaded in the host: `model` is None here, `tokenizer` calls the host."""

    ref: RemoteRef = field(default_factory=lambda: RemoteRef(0))
    host_pid: int = 0


class IsolatedBackend:
    """`InferenceBackend` for `engine`, run in an engine host (see the module's docstring)."""

    def __init__(self, engine: str, log_dir: Path | None = None) -> None:
        self.engine = engine
        self._log_dir = log_dir
        self._host: _Host | None = None
        self._info: HostInfo | None = None
        self._lock = threading.Lock()
        self._forgotten: list[int] = []
        self._logs_made: list[Path] = []
        self._crashed_logs: set[Path] = set()

    # -- the host -----------------------------------------------------------------------
    def _log_path(self) -> Path:
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            # one directory may serve several sessions (xdist workers share the run's): the
            # session's pid keeps their logs apart
            path = self._log_dir / f"engine-{self.engine}-{os.getpid()}-{len(self._logs_made) + 1}.log"
        else:
            handle, name = tempfile.mkstemp(prefix=f"llem-engine-{self.engine}-", suffix=".log")
            os.close(handle)
            path = Path(name)
        self._logs_made.append(path)
        return path

    def _started(self, method: str) -> tuple[_Host, HostInfo]:
        if self._host is not None and self._info is not None:
            return self._host, self._info
        host = _Host(self.engine, self._log_path())
        self._host = host
        try:
            self._info = self._receive(host, "start", None)
        except EngineCrashed:
            raise
        except BaseException:  # the engine could not even be built (not registered, ...)
            host.kill()
            self._host = None
            raise
        return host, self._info

    @property
    def host_pid(self) -> int | None:
        """The running host's process id (None before the first call and after a crash)."""
        return self._host.process.pid if self._host is not None else None

    def _receive(self, host: _Host, method: str, observer: ProgressObserver | None) -> Any:
        """The reply to the call in flight, handing progress steps to `observer` meanwhile."""
        observer_error: BaseException | None = None
        while True:
            try:
                kind, value = host.connection.recv()
            except (EOFError, OSError):
                raise self._crash(host, method) from None
            if kind == "progress":
                if observer is not None and observer_error is None:
                    try:
                        observer(value)
                    except Exception as exc:  # drain to the reply so the wire stays in step
                        observer_error = exc
                continue
            if kind == "error":
                raise value
            if observer_error is not None:
                raise observer_error
            return value

    def _crash(self, host: _Host, method: str) -> EngineCrashed:
        status = host.exit_status()
        host.kill()
        self._host = None
        self._forgotten = []  # the dead host's refs
        hint = self._info.crash_hint if self._info is not None else None
        self._info = None
        self._crashed_logs.add(host.log_path)
        how = _signal_name(status) if status is not None else "a broken connection"
        return EngineCrashed(
            self.engine,
            how,
            call=method,
            frame=_last_frame(host.log_path),
            hint=hint if status is not None and status < 0 else None,
            log=str(host.log_path),
        )

    def _call(self, method: str, *args: Any, observer: ProgressObserver | None = None) -> Any:
        with self._lock:
            host, _ = self._started(method)
            forget, self._forgotten = tuple(self._forgotten), []
            try:
                host.connection.send((method, args, forget))
            except OSError:
                raise self._crash(host, method) from None
            try:
                return self._receive(host, method, observer)
            except (KeyboardInterrupt, SystemExit):
                # the reply is still on its way: the wire is out of step, so this host is done
                self.close()
                raise

    def _forget_later(self, host_pid: int | None, ref_id: int) -> None:
        """Sent with the next call; only to the host that made the ref (a fresh host numbers
        its objects from 1 again, and must not drop one of its own for a dead host's)."""
        if host_pid is not None and host_pid == self.host_pid:
            self._forgotten.append(ref_id)

    def begin_close(self) -> None:
        """Ask the host to release its models and exit, and go on: `close` waits for it."""
        with self._lock:
            if self._host is not None:
                self._host.request_close()

    def close(self) -> list[str]:
        """End the host, which releases the models it still holds first, and remove the log
        of a host that did not crash when it was a temporary file. Returns the host's lines on
        models it failed to release."""
        host, self._host, self._info = self._host, None, None
        self._forgotten = []
        failures = [
            f"releasing the {self.engine} model {device} failed: {error}"
            for device, error in (host.close() if host is not None else [])
        ]
        if self._log_dir is None:
            for path in self._logs_made:
                if path not in self._crashed_logs:
                    with contextlib.suppress(OSError):
                        path.unlink()
        return failures

    # -- what the lifecycle reads -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.engine

    @property
    def exclusive(self) -> bool:
        return self._call_info().exclusive

    @property
    def schedules_requests(self) -> bool:
        return self._call_info().schedules_requests

    @property
    def observes_steps(self) -> bool:
        return self._call_info().observes_steps

    def _call_info(self) -> HostInfo:
        with self._lock:
            return self._started("start")[1]

    # -- the protocol, forwarded ------------------------------------------------------------
    def version(self) -> str | None:
        result: str | None = self._call("version")
        return result

    def settings_problems(self, config: ExperimentConfig) -> list[str]:
        result: list[str] = self._call("settings_problems", config)
        return result

    def resolve_model(self, reference: str) -> ResolvedModel:
        result: ResolvedModel = self._call("resolve_model", reference)
        return result

    def device_problems(self, requested: str, device: str) -> list[str]:
        result: list[str] = self._call("device_problems", requested, device)
        return result

    def resolve_device(self, device: str) -> str:
        result: str = self._call("resolve_device", device)
        return result

    def gpu_indices(self, device: str) -> tuple[int, ...]:
        result: tuple[int, ...] = self._call("gpu_indices", device)
        return result

    def init_device(self, device: str) -> None:
        self._call("init_device", device)

    def set_threads(self, num_threads: int) -> None:
        self._call("set_threads", num_threads)

    def seed(self, seed: int) -> None:
        self._call("seed", seed)

    def cache_key(self, spec: LoadSpec) -> tuple[str, ...]:
        result: tuple[str, ...] = self._call("cache_key", spec)
        return result

    def load(self, spec: LoadSpec) -> LoadedModel:
        summary: LoadedSummary = self._call("load", spec)
        loaded = RemoteLoaded(
            model=None,
            tokenizer=None,
            device=summary.device,
            dtype=summary.dtype,
            eos_token_ids=summary.eos_token_ids,
            pad_token_id=summary.pad_token_id,
            settings=summary.settings,
            ref=summary.ref,
            host_pid=self.host_pid or 0,
        )
        loaded.tokenizer = RemoteTokenizer(self, summary.ref)
        return loaded

    def holds(self, loaded: LoadedModel) -> bool:
        """Whether `loaded` lives in the running host (not in one that crashed)."""
        return isinstance(loaded, RemoteLoaded) and loaded.host_pid == self.host_pid

    def release(self, loaded: LoadedModel) -> None:
        if self.holds(loaded):
            assert isinstance(loaded, RemoteLoaded)
            self._call("release", loaded.ref)

    def prepare(
        self, loaded: LoadedModel, prompts: PromptSet, batch_size: int, max_input_tokens: int
    ) -> PreparedPrompts:
        prepared: PreparedPrompts = self._call("prepare", _ref(loaded), prompts, batch_size, max_input_tokens)
        host_pid = self.host_pid
        for batch in prepared.batches:  # the host drops a batch once nothing here holds it
            weakref.finalize(batch, self._forget_later, host_pid, batch.id)
        return prepared

    def generate(
        self,
        loaded: LoadedModel,
        batch: Any,
        max_new_tokens: int,
        fixed_length: bool,
        observer: ProgressObserver | None = None,
    ) -> list[RequestOutput]:
        result: list[RequestOutput] = self._call(
            "generate",
            _ref(loaded),
            batch,
            max_new_tokens,
            fixed_length,
            observer is not None,
            observer=observer,
        )
        return result

    def parameter_count(self, loaded: LoadedModel) -> ParameterCount | None:
        result: ParameterCount | None = self._call("parameter_count", _ref(loaded))
        return result

    def counted_flops(
        self, loaded: LoadedModel, prepared: PreparedPrompts, max_new_tokens: int, fixed_length: bool
    ) -> float | None:
        result: float | None = self._call(
            "counted_flops", _ref(loaded), prepared, max_new_tokens, fixed_length
        )
        return result

    def synchronize(self, device: str) -> None:
        self._call("synchronize", device)


def _ref(loaded: LoadedModel) -> RemoteRef:
    if not isinstance(loaded, RemoteLoaded):
        raise TypeError("a model loaded in this process cannot run in an engine host")
    return loaded.ref
