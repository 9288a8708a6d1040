"""A server the experiment starts: its port, its devices, its log, its readiness, its end.

`server.command` is the user's own command line (`vllm serve {model} --port {port}`, a
`llama-server` or `python -m llama_cpp.server` invocation, ...), split like a shell would
(`shlex`) and run without a shell, with the placeholders filled in:

- `{port}`: a free loopback port picked for it; `{host}`: 127.0.0.1;
- `{model}`: the experiment's model as a transformers checkpoint directory (what vLLM, SGLang and
  TGI load); `{gguf}`: the same model as a GGUF file (what llama.cpp loads);
- `{python}`: this interpreter (a server from the same environment).

Its devices are the experiment's `device`: `CUDA_VISIBLE_DEVICES` is set for it (empty on
`cpu`), so the GPU meters read exactly the boards it runs on. Its output goes to a log file
beside the report. It is ready when `GET /v1/models` answers 200 (every OpenAI-compatible
server has it; `/health` differs between them). It dies with the session: it runs in a
process group of its own that `stop` ends (SIGTERM, then SIGKILL), and the kernel sends it
SIGKILL if the session's process dies first (`PR_SET_PDEATHSIG`; a server may ignore
SIGTERM while it loads: vLLM does).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pytest_llem.engines.failures import EngineLoadError, root_cause

LOOPBACK = "127.0.0.1"
PLACEHOLDERS = ("port", "host", "model", "gguf", "python")
POLL_S = 0.5
STOP_WAIT_S = 20.0
LOG_TAIL_LINES = 400
PR_SET_PDEATHSIG = 1


class ServerError(EngineLoadError):
    """A served model's server could not be reached, started, or kept running; one line with
    the cause and the fix."""


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def placeholders_in(command: str) -> set[str]:
    """The `{name}` placeholders a command uses (an unknown one is a pre-flight problem)."""
    import string

    return {name for _, name, _, _ in string.Formatter().parse(command) if name is not None}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _log_tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return []


@dataclass
class StartedServer:
    """A server process this session started and must end."""

    command: str
    argv: list[str]
    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, command: str, values: dict[str, str], cuda_visible: str, log_path: Path) -> StartedServer:
        port = free_port()
        values = {**values, "port": str(port), "host": LOOPBACK, "python": sys.executable}
        argv = [part.format(**values) for part in shlex.split(command)]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": cuda_visible}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise ServerError(
                    f"server.command could not start ({argv[0]!r}: {exc.strerror}); check the "
                    "program's name and that it is installed"
                ) from None
        return cls(command, argv, f"http://{LOOPBACK}:{port}", log_path, process)

    def exit_problem(self, when: str = "") -> str | None:
        """Why the server is not running - how it ended, `when`, the last error in its log, and
        the log's path - or None while it runs."""
        code = self.process.poll()
        if code is None:
            return None
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        cause = root_cause(_log_tail(self.log_path))
        return f"the server {how}{when}" + (f" ({cause})" if cause else "") + f"; its log: {self.log_path}"

    def wait_ready(self, timeout_s: float) -> None:
        """Until `GET /v1/models` answers 200; a server that exits or does not answer within
        `timeout_s` is a `ServerError` (and is stopped)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=POLL_S * 4) as client:
            while True:
                problem = self.exit_problem(" before it was ready")
                if problem is not None:
                    raise ServerError(
                        f"server.command {self.command!r}: {problem}; run the command by hand to see it start"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/v1/models").status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    self.stop()
                    raise ServerError(
                        f"server.command {self.command!r} was not ready (GET /v1/models) within "
                        f"server.ready_timeout_s={timeout_s:g} s; raise server.ready_timeout_s if it "
                        f"loads slowly, or check its log: {self.log_path}"
                    )
                time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM to its process group, then SIGKILL after `STOP_WAIT_S`; reaped either way."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_WAIT_S)
        # the group may hold children that outlive the leader (vLLM's engine core)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_WAIT_S)
