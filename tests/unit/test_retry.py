"""Retry controllers' decisions and RetryPolicy driving tenacity's strategies."""

from __future__ import annotations

import pytest
import tenacity

from workerflow.failure import Failure
from workerflow.retry import (
    Attempt,
    Decision,
    ForEach,
    History,
    ParameterizedForEach,
    RetryPolicy,
    Times,
)

BOOM = Failure(("builtins.ValueError", "builtins.Exception"), "boom")


def history(n: int) -> History:
    return History(tuple(Attempt(i, {"t": BOOM}) for i in range(n)))


def test_times_counts_attempts() -> None:
    times = Times(3, provides="attempt")
    assert times.provides_names == ("attempt",)
    assert [times.execute(history(n)) for n in range(3)] == [1, 2, 3]
    assert [times.on_failure(history(n)) for n in (1, 2, 3)] == [
        Decision.RETRY,
        Decision.RETRY,
        Decision.REVERT,
    ]
    with pytest.raises(ValueError):
        Times(0)


def test_for_each_feeds_values_in_order() -> None:
    each = ForEach(["a", "b"], provides="v")
    assert [each.execute(history(n)) for n in range(2)] == ["a", "b"]
    assert each.on_failure(history(1)) == Decision.RETRY
    assert each.on_failure(history(2)) == Decision.REVERT
    with pytest.raises(ValueError, match="no value left"):
        each.execute(history(2))


def test_parameterized_for_each_reads_its_input() -> None:
    each = ParameterizedForEach(requires="values", provides="v", rebind={"values": "choices"})
    assert each.inputs == {"values": "choices"}
    assert each.execute(history(1), values=[10, 20]) == 20
    assert each.on_failure(history(2), values=[10, 20]) == Decision.REVERT


def test_history_and_attempt_round_trip() -> None:
    h = history(2)
    assert len(h) == 2 and h.values() == [0, 1]
    assert h.last_failures == {"t": BOOM}
    assert History().last_failures == {}
    assert Attempt.from_dict(h.attempts[0].to_dict()) == h.attempts[0]


def test_retry_policy_uses_tenacity_stop_and_wait() -> None:
    policy = RetryPolicy(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential(multiplier=1, min=0, max=100),
    )
    state = policy.start()
    assert state.attempt == 1
    delays = [state.next_delay(BOOM), state.next_delay(BOOM)]
    assert delays == [1.0, 2.0]  # tenacity's exponential backoff, not ours
    assert state.attempt == 3
    assert state.next_delay(BOOM) is None  # the third attempt was the last


def test_retry_policy_only_retries_matching_failures() -> None:
    state = RetryPolicy(retry_on=(KeyError, "workerflow.errors.WorkerLost")).start()
    assert state.next_delay(BOOM) is None
    lost = Failure(("workerflow.errors.WorkerLost",), "gone")
    assert state.next_delay(lost) == 0.0


def test_retry_policy_stop_after_delay_sees_elapsed_time() -> None:
    state = RetryPolicy(stop=tenacity.stop_after_delay(0)).start()
    assert state.next_delay(BOOM) is None
