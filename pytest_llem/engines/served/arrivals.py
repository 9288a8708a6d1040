"""When each request of a served load is sent: a seeded arrival process.

The definitions are vLLM's `benchmarks/serve.py` and NVIDIA AIPerf's, so a rate means the same
here as there:

- `request_rate` (requests/s): the mean arrival rate; None (`inf`) sends every request at once;
- `burstiness`: the shape k of the gamma distribution the gaps between arrivals are drawn from,
  with scale 1 / (rate x k), so the mean gap is 1 / rate whatever k is. k = 1 is a Poisson
  process (exponential gaps); k < 1 is burstier; a large k approaches evenly spaced requests;
- the gaps come from `numpy.random.default_rng(seed)`, so a schedule is reproducible: the same
  settings and seed send the same requests at the same offsets in every window and every run.

`concurrency` (the most requests in flight) is not part of the schedule: a request that is due
while `concurrency` others are in flight waits for a slot, and that wait is reported apart
(`client_queue_s`), never hidden in its time to first token.
"""

from __future__ import annotations

import numpy as np


def arrival_offsets(requests: int, request_rate: float | None, burstiness: float, seed: int) -> list[float]:
    """Seconds after the load starts at which each request is due (the first at 0)."""
    if requests <= 0:
        return []
    if request_rate is None:
        return [0.0] * requests
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=requests - 1)
    return [0.0, *np.cumsum(gaps).tolist()]
