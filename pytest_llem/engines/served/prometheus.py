"""The server's own account of its batch: its Prometheus `/metrics`, scraped during a load.

A served load's energy per token depends on how full the server's batch was, and only the
server knows that. ML.ENERGY's benchmark reads vLLM's `vllm:num_requests_running` and rejects
a run whose mean running requests fall below 80% of the target concurrency (its validator);
the same gauge is read here, with the server's KV-cache use beside it:

| server | running requests | KV-cache use (0-1) |
|---|---|---|
| vLLM | `vllm:num_requests_running` | `vllm:kv_cache_usage_perc` (older: `vllm:gpu_cache_usage_perc`) |
| llama.cpp `llama-server --metrics` | `llamacpp:requests_processing` | `llamacpp:kv_cache_usage_ratio` |

A gauge with several label sets (one per served model) is summed. A server without
`/metrics`, or without these gauges, gives no scrape, and the result says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

RUNNING_GAUGES = ("vllm:num_requests_running", "llamacpp:requests_processing")
KV_CACHE_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio")
SCRAPE_PERIOD_S = 0.25


@dataclass(frozen=True)
class Scrape:
    """One read of the gauges, at `at_s` on the client's monotonic clock."""

    at_s: float
    running: float | None
    kv_cache_usage: float | None


def _first_gauge(families: dict[str, float], names: Sequence[str]) -> float | None:
    for name in names:
        if name in families:
            return families[name]
    return None


def parse_gauges(text: str) -> tuple[float | None, float | None]:
    """(running requests, KV-cache use) from a Prometheus exposition, None where absent."""
    totals: dict[str, float] = {}
    wanted = {*RUNNING_GAUGES, *KV_CACHE_GAUGES}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return _first_gauge(totals, RUNNING_GAUGES), _first_gauge(totals, KV_CACHE_GAUGES)


async def scrape_until(
    session: aiohttp.ClientSession, url: str, done: asyncio.Event, scrapes: list[Scrape]
) -> str | None:
    """Scrape `url` every `SCRAPE_PERIOD_S` until `done` is set; the reason there are no
    scrapes (no `/metrics`, no known gauge), or None."""
    while not done.is_set():
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                if response.status != 200:
                    return f"GET /metrics answered HTTP {response.status}"
                running, kv_cache = parse_gauges(await response.text())
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return f"GET /metrics failed ({type(exc).__name__})"
        if running is None:
            return f"/metrics has none of {', '.join(RUNNING_GAUGES)}"
        scrapes.append(Scrape(time.perf_counter(), running, kv_cache))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), SCRAPE_PERIOD_S)
    return None


def mean_between(scrapes: Sequence[Scrape], start_s: float, end_s: float, field: str) -> float | None:
    """The mean of a gauge over the scrapes taken in [start_s, end_s]; None without any."""
    values = [
        value
        for scrape in scrapes
        if start_s <= scrape.at_s <= end_s and (value := getattr(scrape, field)) is not None
    ]
    return sum(values) / len(values) if values else None
