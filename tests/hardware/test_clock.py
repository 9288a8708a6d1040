"""The one periodic-thread helper. Deterministic by construction: nothing here depends on how
long a thread takes to be scheduled."""

import pytest

from pytest_llem.hardware.clock import PeriodicThread


def test_a_thread_that_fires_after_one_interval_never_fires_when_stopped_before_it() -> None:
    calls = []
    thread = PeriodicThread(3600.0, lambda: calls.append(1), "test", first_at_start=False)
    thread.start()
    thread.stop()  # returns at once: the wait for the first interval ends on stop
    assert calls == []


def test_the_first_error_of_a_callback_is_raised_by_stop() -> None:
    def fail() -> None:
        raise RuntimeError("the poll failed")

    thread = PeriodicThread(3600.0, fail, "test")
    thread.start()
    thread._thread.join()  # the callback runs at start and its error ends the thread
    with pytest.raises(RuntimeError, match="the poll failed"):
        thread.stop()
