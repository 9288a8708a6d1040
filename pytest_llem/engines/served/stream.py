"""The load client: a seeded schedule of streamed requests to an OpenAI-compatible server.

What it does is what vLLM's `benchmarks/serve.py`, SGLang's `bench_serving` and AIPerf do, so
their figures and these compare:

- one `aiohttp.ClientSession` per concurrency, kept open across windows (keep-alive), with a
  connection limit equal to the concurrency and a 1 MiB read buffer (a long stream's chunk
  never overflows it);
- a request is due at its arrival offset (`arrivals.py`); it then waits for one of
  `concurrency` slots, and is sent. The wait is `queue_s`, reported apart;
- every time is read from `time.perf_counter()` (the monotonic clock) on this side: time to
  first token is the arrival of the first chunk that carries a token minus the send time;
  each token chunk's arrival is kept (inter-token latencies); the request's end is its last
  token chunk (the final usage chunk carries no token and does not count);
- output tokens come from the server's `usage` (asked for with `stream_options.include_usage`)
  and, where a server sends none, from the model's tokenizer over the streamed text; each
  request says which (`tokens_counted_by`);
- a request that fails (a refused connection, an HTTP status other than 200, an error event in
  the stream, a timeout) is kept with its reason, never dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pytest_llem.engines.base import GenerationProgress, ProgressObserver, RequestOutput, steady_state_counts

READ_BUFFER_BYTES = 2**20
ERROR_BODY_CHARS = 300


@dataclass
class StreamedRequest:
    """One request as the client saw it; times are seconds on the client's monotonic clock."""

    index: int
    due_s: float
    sent_s: float = 0.0
    chunk_times_s: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    usage_tokens: int | None = None
    usage_prompt_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class LoadRun:
    """What one `generate` call of the served engine did: its requests and its own costs."""

    requests: list[StreamedRequest]
    started_s: float
    ended_s: float
    client_cpu_s: float


def _chunk_text(event: dict[str, Any], chat: bool) -> str | None:
    """The generated text a streamed event carries (None when it carries none: a usage-only or
    role-only chunk)."""
    choices = event.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    return text if text else None


class _Progress:
    """Counts requests' first tokens and finishes across one call, for the phase recorder."""

    def __init__(self, requests: int, started_s: float, observer: ProgressObserver | None) -> None:
        self.requests, self.started_s, self.observer = requests, started_s, observer
        self.first_tokens = self.finished = self.chunks = 0

    def _tell(self) -> None:
        if self.observer is not None:
            at_s = time.perf_counter() - self.started_s
            self.observer(
                GenerationProgress(self.requests, self.first_tokens, self.finished, self.chunks, at_s)
            )

    def chunk(self, first: bool) -> None:
        self.chunks += 1
        if first:
            self.first_tokens += 1
            self._tell()

    def finish(self) -> None:
        self.finished += 1
        self._tell()


async def _stream_one(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    chat: bool,
    request: StreamedRequest,
    progress: _Progress,
    timeout_s: float,
) -> None:
    request.sent_s = time.perf_counter()
    try:
        async with session.post(
            url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status != 200:
                body = (await response.text())[:ERROR_BODY_CHARS].replace("\n", " ")
                request.error = f"HTTP {response.status}: {body}"
                return
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    request.error = (
                        f"error event in the stream: {json.dumps(event['error'])[:ERROR_BODY_CHARS]}"
                    )
                    return
                text = _chunk_text(event, chat)
                if text is not None:
                    request.chunk_times_s.append(time.perf_counter())
                    request.text.append(text)
                    progress.chunk(first=len(request.chunk_times_s) == 1)
                usage = event.get("usage")
                if usage:
                    request.usage_tokens = usage.get("completion_tokens")
                    request.usage_prompt_tokens = usage.get("prompt_tokens")
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        request.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
    finally:
        if request.error is None:
            progress.finish()


async def run_load(
    session: aiohttp.ClientSession,
    url: str,
    payloads: Sequence[dict[str, Any]],
    offsets: Sequence[float],
    concurrency: int,
    chat: bool,
    timeout_s: float,
    observer: ProgressObserver | None,
) -> LoadRun:
    """Send `payloads[i]` at `offsets[i]` seconds after the start, at most `concurrency` in
    flight, and wait for all of them."""
    slots = asyncio.Semaphore(concurrency)
    cpu_start = time.thread_time()
    started = time.perf_counter()
    progress = _Progress(len(payloads), started, observer)
    requests = [StreamedRequest(index, started + offset) for index, offset in enumerate(offsets)]

    async def one(request: StreamedRequest, payload: dict[str, Any]) -> None:
        delay = request.due_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with slots:
            await _stream_one(session, url, payload, chat, request, progress, timeout_s)

    await asyncio.gather(
        *(one(request, payload) for request, payload in zip(requests, payloads, strict=True))
    )
    return LoadRun(requests, started, time.perf_counter(), time.thread_time() - cpu_start)


def request_outputs(
    run: LoadRun, input_tokens: Sequence[int], count_text: Callable[[str], int]
) -> list[RequestOutput]:
    """The client's view of each request as the lifecycle's `RequestOutput`: times since the
    request was sent, the wait for a slot apart, output tokens from the server's usage or else
    the tokenizer."""
    outputs = []
    for request, prompt_tokens in zip(run.requests, input_tokens, strict=True):
        times = [t - request.sent_s for t in request.chunk_times_s]
        if request.usage_tokens is not None:
            tokens, counted_by = int(request.usage_tokens), "server usage"
        else:
            tokens, counted_by = count_text("".join(request.text)), "tokenizer"
        if request.error is not None:
            tokens = 0
        outputs.append(
            RequestOutput(
                output_tokens=tokens,
                input_tokens=int(request.usage_prompt_tokens or prompt_tokens),
                first_token_s=times[0] if times and request.error is None else None,
                token_times_s=tuple(times) if request.error is None else None,
                e2e_s=times[-1] if times and request.error is None else None,
                queue_s=max(0.0, request.sent_s - request.due_s),
                error=request.error,
                tokens_counted_by=counted_by if request.error is None else None,
            )
        )
    return outputs


def steady_span(run: LoadRun, concurrency: int) -> tuple[float, float] | None:
    """ML.ENERGY's steady state (`steady_state_counts`) on the client's clock: from the first
    token that makes `concurrency` requests started to the finish that makes enough of them
    finished; None when the load is too short to have one or the batch never filled."""
    counts = steady_state_counts(len(run.requests), concurrency)
    ok = [request for request in run.requests if request.error is None and request.chunk_times_s]
    firsts = sorted(request.chunk_times_s[0] for request in ok)
    ends = sorted(request.chunk_times_s[-1] for request in ok)
    if counts is None or len(firsts) < counts[0] or len(ends) < counts[1]:
        return None
    start, end = firsts[counts[0] - 1], ends[counts[1] - 1]
    return (start, end) if end > start else None
