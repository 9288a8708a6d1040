"""Split a window at the engine's steps: prefill and decode energy, vLLM's steady state.

A window's energy covers everything inside it: every request's prefill, its decode, and for
an engine that batches requests itself (vLLM) the ramp-up while the batch fills and the drain
while it empties. The public references report parts of it (ML.ENERGY: the steady state of
continuous batching; prefill and decode energy per token), so the lifecycle reads the meter
at chosen engine steps (`PhaseRecorder`, the observer `generate` is given) and the pure
functions below turn those reads into figures (docs/metrics.md states each definition):

- a span ends at a read; it is **prefill** when its last step gave a request its first token,
  else **decode**. The recorder reads at the start of each `generate` call, at every step that
  gives a first token or finishes a request, and, for an engine that schedules requests itself,
  at every step (there a prefill step may follow a decode step inside one call);
- the **steady state** of one call runs from the step after which `max_num_seqs` requests
  have their first token to the step after which `requests - max_num_seqs - 1` have finished.

A figure is only as exact as the meter at an instant: a phase's energy is null, with the
reason, when the meter cannot be read mid-window, when the phase lasts less in all than the
meter's minimum window, or when one of its spans is shorter than the meter's update period
(the counter cannot tell it from the work around it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pytest_llem.engines.base import GenerationProgress, steady_state_counts
from pytest_llem.hardware.clock import Clock
from pytest_llem.schema.results import PhaseEnergy, SteadyState

Phase = Literal["prefill", "decode"]
_START = GenerationProgress(requests=0, first_tokens=0, finished=0, output_tokens=0, at_s=0.0)


@dataclass(frozen=True)
class Mark:
    """The meter read at one instant of a call: energy since the window opened (None where it
    could not be read) and the call's progress then."""

    time_s: float
    energy_j: float | None
    progress: GenerationProgress


@dataclass(frozen=True)
class Span:
    """The work between two consecutive reads of one call."""

    phase: Phase
    start: Mark
    end: Mark

    @property
    def seconds(self) -> float:
        return self.end.time_s - self.start.time_s

    @property
    def energy_j(self) -> float | None:
        if self.start.energy_j is None or self.end.energy_j is None:
            return None
        return self.end.energy_j - self.start.energy_j

    @property
    def output_tokens(self) -> int:
        return self.end.progress.output_tokens - self.start.progress.output_tokens


@dataclass
class CallRecord:
    """One `generate` call as the recorder saw it."""

    input_tokens: int
    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    steady_start: Mark | None = None
    steady_end: Mark | None = None


class PhaseRecorder:
    """The observer the lifecycle hands to `generate` inside a window.

    `read` is the meter's mid-window read (None: the meter has none; times and tokens are
    still recorded). `max_num_seqs` is set for an engine that schedules requests itself: its
    steps are all read, and the steady state is marked.
    """

    def __init__(
        self, read: Callable[[], float | None] | None, clock: Clock, max_num_seqs: int | None = None
    ) -> None:
        self._read = read
        self._clock = clock
        self._max_num_seqs = max_num_seqs
        self.calls: list[CallRecord] = []
        self._last: Mark | None = None

    def _mark(self, progress: GenerationProgress) -> Mark:
        energy = self._read() if self._read is not None else None
        return Mark(self._clock.now(), energy, progress)

    def begin_call(self) -> None:
        """Right before a `generate` call: the call's first span starts here."""
        self.calls.append(CallRecord(input_tokens=0))
        self._last = self._mark(_START)

    def end_call(self, input_tokens: int) -> None:
        """Right after the call: the prompt tokens its requests were given."""
        self.calls[-1].input_tokens = input_tokens
        self._last = None

    def __call__(self, progress: GenerationProgress) -> None:
        if self._last is None or not self.calls:
            raise RuntimeError("PhaseRecorder: begin_call() was not called before the engine's first step")
        call, last = self.calls[-1], self._last
        call.requests = progress.requests
        gave_first_token = progress.first_tokens > last.progress.first_tokens
        finished_one = progress.finished > last.progress.finished
        if not (gave_first_token or finished_one or self._max_num_seqs is not None):
            return
        mark = self._mark(progress)
        call.spans.append(Span("prefill" if gave_first_token else "decode", last, mark))
        self._last = mark
        counts = (
            steady_state_counts(progress.requests, self._max_num_seqs)
            if self._max_num_seqs is not None
            else None
        )
        if counts is not None:
            first_tokens, finished = counts
            if call.steady_start is None and progress.first_tokens >= first_tokens:
                call.steady_start = mark
            if call.steady_end is None and progress.finished >= finished:
                call.steady_end = mark


@dataclass(frozen=True)
class MeterFacts:
    """What a figure from the recorder's reads may claim, by the meter that made them."""

    source: str  # the meter's name ("none" for no energy)
    reads_mid_window: bool
    minimum_s: float  # the meter's minimum valid window (validity.minimum_window_s)
    update_period_s: float | None  # how often its reading changes; None when unknown


def _energy_problem(spans: Sequence[Span], what: str, meter: MeterFacts) -> str | None:
    """Why the summed energy of `spans` is not a figure to report, or None when it is."""
    if meter.source == "none":
        return "no energy meter (--llem-energy=none)"
    if not meter.reads_mid_window:
        return (
            f"the {meter.source} meter reads whole windows only; "
            "use --llem-energy=nvml, rapl or estimate to split a window"
        )
    if not spans:
        return f"the engine reported no {what} step"
    if any(span.energy_j is None for span in spans):
        return "the meter could not be read mid-window (a board without an energy counter)"
    seconds = sum(span.seconds for span in spans)
    if seconds < meter.minimum_s:
        return (
            f"{what} lasted {seconds:.3g} s in all, under the {meter.source} meter's "
            f"{meter.minimum_s:g} s minimum window; raise n_prompts or repeats"
        )
    shortest = min(span.seconds for span in spans)
    if meter.update_period_s is not None and shortest < meter.update_period_s:
        return (
            f"a {what} span lasted {shortest * 1e3:.3g} ms, under the {meter.source} meter's "
            f"{meter.update_period_s * 1e3:g} ms update period: its counter cannot separate it"
        )
    return None


def _summed_energy(spans: Sequence[Span]) -> float:
    return sum(span.energy_j or 0.0 for span in spans)


def phase_energy(
    calls: Sequence[CallRecord], meter: MeterFacts, withheld: str | None = None
) -> PhaseEnergy | None:
    """Prefill and decode over every recorded call; None when no call reported a step. With
    `withheld` (an invalid experiment publishes no energy) the energies are null for that reason."""
    if not any(call.spans for call in calls):
        return None
    spans = [span for call in calls for span in call.spans]
    prefill = [s for s in spans if s.phase == "prefill"]
    decode = [s for s in spans if s.phase == "decode"]
    input_tokens = sum(call.input_tokens for call in calls)
    decode_tokens = sum(s.output_tokens for s in decode)
    prefill_reason = withheld or _energy_problem(prefill, "prefill", meter)
    decode_reason = withheld or _energy_problem(decode, "decode", meter)
    prefill_j = None if prefill_reason else _summed_energy(prefill)
    decode_j = None if decode_reason else _summed_energy(decode)
    return PhaseEnergy(
        prefill_s=sum(s.seconds for s in prefill),
        prefill_input_tokens=input_tokens,
        prefill_energy_j=prefill_j,
        prefill_energy_per_input_token_j=prefill_j / input_tokens
        if prefill_j is not None and input_tokens
        else None,
        prefill_null_reason=prefill_reason,
        decode_s=sum(s.seconds for s in decode),
        decode_output_tokens=decode_tokens,
        decode_energy_j=decode_j,
        decode_energy_per_output_token_j=decode_j / decode_tokens
        if decode_j is not None and decode_tokens
        else None,
        decode_null_reason=decode_reason,
    )


def steady_spans(call: CallRecord) -> list[Span]:
    """The spans between the call's steady-state marks (empty when it had no steady state)."""
    if call.steady_start is None or call.steady_end is None:
        return []
    if call.steady_end.time_s <= call.steady_start.time_s:
        return []
    return [
        s
        for s in call.spans
        if s.start.time_s >= call.steady_start.time_s and s.end.time_s <= call.steady_end.time_s
    ]


def _no_steady_state(calls: Sequence[CallRecord], max_num_seqs: int) -> str | None:
    """Why the calls have no steady state; None when every one has."""
    requests = max((call.requests for call in calls), default=0)
    if steady_state_counts(requests, max_num_seqs) is None:
        return (
            f"no steady state: {requests} requests for max_num_seqs={max_num_seqs}; "
            f"it needs at least max_num_seqs + 2 = {max_num_seqs + 2} requests (raise n_prompts)"
        )
    if not all(steady_spans(call) for call in calls):
        return (
            "no steady state: requests began to finish before max_num_seqs of them "
            "had their first token (the batch never filled)"
        )
    return None


def steady_state(
    calls: Sequence[CallRecord], max_num_seqs: int, meter: MeterFacts, withheld: str | None = None
) -> SteadyState:
    """The steady state summed over every call, or a record saying why there is none. With
    `withheld` (an invalid experiment publishes no energy) its energy is null for that reason."""
    requests = max((call.requests for call in calls), default=0)
    missing = _no_steady_state(calls, max_num_seqs)
    if missing is not None:
        return SteadyState(max_num_seqs=max_num_seqs, requests=requests, null_reason=withheld or missing)
    spans = [span for call in calls for span in steady_spans(call)]
    seconds = sum(s.seconds for s in spans)
    tokens = sum(s.output_tokens for s in spans)
    reason = withheld or _energy_problem(spans, "steady-state", meter)
    energy = None if reason else _summed_energy(spans)
    return SteadyState(
        max_num_seqs=max_num_seqs,
        requests=requests,
        seconds=seconds,
        output_tokens=tokens,
        energy_j=energy,
        energy_per_output_token_j=energy / tokens if energy is not None and tokens else None,
        tokens_per_second=tokens / seconds if seconds > 0 else None,
        average_power_w=energy / seconds if energy is not None and seconds > 0 else None,
        null_reason=reason,
    )
