"""Does measuring cost throughput? llem.run() against a bare `model.generate` loop.

Same model, prompts, batch size, generation settings and thread count, in one process, as
40 ABBA pairs (see _pairing.py). One thread on both sides: with 2 threads on this VM a
preempted thread stalls the other at every barrier, which buries a 1% effect in noise. The
figure, the median per-pair ratio llem/bare of tokens per second, is recorded with
`llem.record_figure` (report, summary, JUnit) beside its target >= 0.97, and never asserted.

The paired rounds call `llem_session.run()`, which is exactly what `llem.run()` calls, so
the session report keeps one row for this test instead of one per round.
"""

import pytest
from _pairing import (
    PAIRED_SETTINGS,
    PAIRS,
    bare_batches,
    bare_generate_tokens_per_second,
    describe,
    paired_ratios,
)

from pytest_llem.measure.session import ExperimentSession
from pytest_llem.plugin.fixture import LlemFixture

TARGET_RATIO = 0.97


@pytest.mark.llem(**PAIRED_SETTINGS)
def test_llem_run_matches_bare_generate(
    llem: LlemFixture, llem_session: ExperimentSession, request: pytest.FixtureRequest
) -> None:
    loaded = llem.load()
    batches = bare_batches(loaded, llem.config)
    llem.run(repeats=1)  # 5 warmup calls, and caches the idle baseline
    round_config = llem.settings(repeats=1, warmup=0, min_window_s=0)  # one pass, as the bare loop

    def llem_tokens_per_second() -> float:
        result = llem_session.run(round_config, request.node.nodeid)
        assert result.status == "passed", result.error
        return result.tokens_per_second

    def bare_tokens_per_second() -> float:
        return bare_generate_tokens_per_second(loaded, batches, llem.config.max_new_tokens)

    ratio, spread = describe(paired_ratios(llem_tokens_per_second, bare_tokens_per_second, PAIRS))
    # recorded beside its target, never asserted: a timing on a shared machine is evidence
    llem.record_figure(
        "llem_over_bare_tokens_per_second_ratio",
        round(ratio, 4),
        at_least=TARGET_RATIO,
        detail=f"median of {PAIRS} ABBA pairs ({spread}); threads={llem.config.num_threads}, "
        f"{llem.config.dtype}, batch {llem.config.batch_size}",
    )
