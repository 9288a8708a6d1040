"""Engine failures as one line that names the root cause and the fix.

An engine that fails to load often says why somewhere else: vLLM's engine core is a child
process that logs its traceback pages above and then raises "Engine core initialization
failed. See root cause above" in the parent. `ChildOutput` passes a child's output through
unchanged while it keeps the last lines, so the cause can be found in them; `root_cause`
finds it; `EngineLoadError` carries the one line to the test failure, the summary and the
report's `error`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import threading
from collections.abc import Iterable, Iterator

from pytest_llem.schema.errors import LlemError

KEPT_LINES = 400
# "ValueError: ...", "(EngineCore pid=12) torch.OutOfMemoryError: ...", "ERROR ... RuntimeError: ..."
_EXCEPTION_LINE = re.compile(r"(?:^|\s|\))((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception)): (\S.*)$")


class EngineLoadError(LlemError):
    """An engine could not load a model; the message is one line with the cause and the fix."""


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message` (messages of several lines keep their first)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].strip().rstrip('.')}" if text else type(exc).__name__


def root_cause(lines: Iterable[str], ignore: tuple[str, ...] = ()) -> str | None:
    """The last `SomeError: message` line in `lines` whose message does not start with one of
    `ignore` (the parent's own "see above" error), without its log prefix."""
    found = None
    for line in lines:
        match = _EXCEPTION_LINE.search(line.rstrip())
        if match and not match.group(2).startswith(ignore):
            found = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2).strip().rstrip('.')}"
    return found


class ChildOutput:
    """While open, file descriptors 1 and 2 of this process are pipes that a thread copies to
    where they pointed before, keeping the last lines. Child processes started meanwhile inherit
    the pipes and keep writing through them after `close()` restores this process's own
    descriptors; a copier ends when the last child holding its pipe exits."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
        self._lock = threading.Lock()
        self._saved: list[int] = []
        self._threads: list[threading.Thread] = []

    def _copy(self, read_fd: int, target_fd: int) -> None:
        pending = b""
        with os.fdopen(read_fd, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                with contextlib.suppress(OSError):
                    os.write(target_fd, chunk)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                with self._lock:
                    self.lines.extend(line.decode(errors="replace") for line in complete)
        with self._lock:
            if pending:
                self.lines.append(pending.decode(errors="replace"))
        os.close(target_fd)

    def open(self) -> ChildOutput:
        for fd in (1, 2):
            read_fd, write_fd = os.pipe()
            target = os.dup(fd)  # where fd pointed (a terminal, or pytest's capture file)
            self._saved.append(os.dup(fd))
            os.dup2(write_fd, fd)
            os.close(write_fd)
            thread = threading.Thread(
                target=self._copy, args=(read_fd, target), daemon=True, name="llem-engine-output"
            )
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        """This process's descriptors back where they were (children keep the pipes)."""
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = []

    def settle(self, timeout_s: float) -> list[str]:
        """The kept lines once every writer has closed its end (a failed child exited), or after
        `timeout_s` at most."""
        for thread in self._threads:
            thread.join(timeout_s)
        with self._lock:
            return list(self.lines)


@contextlib.contextmanager
def child_output() -> Iterator[ChildOutput]:
    output = ChildOutput().open()
    try:
        yield output
    finally:
        output.close()
