"""The remote request state machine (WAITING -> PENDING -> RUNNING -> DONE), fed fake messages.

No broker, no threads, no kombu: the tracker is fed ``proxy.messages`` responses and heartbeats and
a fake clock, and we check which failure each fault becomes and when.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

import pytest

from proxy.messages import Heartbeat, Response
from workerflow import errors
from workerflow.executors.remote_requests import (
    Actions,
    RemoteRequest,
    RequestState,
    RequestTracker,
)
from workerflow.failure import Failure

TASK_TYPE = "tests.remote_tasks:Add"


def FakeHeartbeat(worker_id: str, **fields: Any) -> Heartbeat:
    """A heartbeat of worker ``worker_id`` serving Add on "default", running nothing."""
    values: dict[str, Any] = {
        "hostname": "host",
        "pid": 1,
        "queues": ["default"],
        "task_types": [TASK_TYPE],
        "concurrency": 1,
        "free_slots": 1,
        "interval": 1.0,
        "running": [],
        "version": "0",
    }
    values.update(fields)
    return Heartbeat(worker_id, **values)


FakeResponse = Response


def make_tracker(**overrides: float) -> RequestTracker:
    settings = {"discovery_timeout": 5.0, "request_timeout": 60.0, "heartbeat_timeout": 10.0}
    settings.update(overrides)
    return RequestTracker(**settings)


def make_record(
    request_id: str = "r1",
    *,
    task_type: str = TASK_TYPE,
    queue: str = "default",
    execution_timeout: float | None = None,
    progress: Any = None,
    attempt: int = 1,
) -> RemoteRequest:
    return RemoteRequest(
        request_id,
        attempt=attempt,
        task_name="add",
        task_type=task_type,
        action="execute",
        queue=queue,
        future=Future(),
        progress=progress,
        execution_timeout=execution_timeout,
        message=object(),
    )


def resolve(actions: Actions) -> None:
    for future, value in actions.settle:
        future.set_result(value)


def settled_failure(record: RemoteRequest) -> Failure:
    assert record.future.done(), f"{record} is not settled"
    value = record.future.result(timeout=0)
    assert isinstance(value, Failure), f"expected a Failure, got {value!r}"
    return value


def running(tracker: RequestTracker, record: RemoteRequest, now: float, worker: str = "w1") -> None:
    resolve(tracker.on_response(FakeResponse(record.id, 1, worker, "running"), now))
    assert record.state is RequestState.RUNNING


# -- WAITING: discovery --------------------------------------------------------------------------


def test_no_worker_is_no_worker_available_at_the_discovery_deadline() -> None:
    tracker = make_tracker()
    record = make_record()
    assert tracker.add(record, now=100.0) is False
    assert record.state is RequestState.WAITING
    assert tracker.next_deadline() == 105.0
    assert not tracker.expire(104.99)
    resolve(tracker.expire(105.0))
    failure = settled_failure(record)
    assert failure.check(errors.NoWorkerAvailable)
    assert "discovery_timeout=5.0" in failure.message
    assert "'add'" in failure.message and "r1" in failure.message
    assert len(tracker) == 0
    with pytest.raises(errors.NoWorkerAvailable):
        failure.reraise()


def test_a_known_live_worker_means_publish_at_once() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    assert tracker.add(record, now=100.5) is True
    assert record.state is RequestState.PENDING
    assert tracker.next_deadline() == 160.5


def test_waiting_requests_are_published_when_a_serving_worker_appears() -> None:
    tracker = make_tracker()
    first, second = make_record("a"), make_record("b")
    other = make_record("c", task_type="tests.remote_tasks:Pid")
    for r in (first, second, other):
        assert tracker.add(r, now=100.0) is False
    actions = tracker.on_heartbeat(FakeHeartbeat("w1"), now=101.0)
    assert actions.publish == [first, second]  # submission order
    assert first.state is second.state is RequestState.PENDING
    assert other.state is RequestState.WAITING
    # The old discovery deadline no longer applies to the published ones.
    resolve(tracker.expire(105.0))
    assert not first.future.done()
    assert settled_failure(other).check(errors.NoWorkerAvailable)


def test_a_worker_on_another_queue_or_a_stopping_or_dead_one_does_not_serve() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("other-queue", queues=["gpu"]), now=100.0)
    tracker.on_heartbeat(FakeHeartbeat("stopping", stopping=True), now=100.0)
    tracker.on_heartbeat(FakeHeartbeat("silent"), now=80.0)
    assert tracker.add(make_record(), now=100.0) is False
    gpu = make_record("g", queue="gpu")
    assert tracker.add(gpu, now=100.0) is True


def test_a_worker_coming_back_to_life_publishes_waiting_requests() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=80.0)
    record = make_record()
    assert tracker.add(record, now=100.0) is False
    assert tracker.on_heartbeat(FakeHeartbeat("w1"), now=101.0).publish == [record]


# -- PENDING: schedule-to-start ------------------------------------------------------------------


def test_no_running_reply_is_request_timeout_and_a_cancel() -> None:
    tracker = make_tracker(request_timeout=3.0)
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=101.0)
    assert not tracker.expire(102.9)
    actions = tracker.expire(103.0)
    assert actions.cancel == ["r1"]
    resolve(actions)
    failure = settled_failure(record)
    assert failure.check(errors.RequestTimeout)
    assert "request_timeout=3.0" in failure.message and "'add'" in failure.message
    assert "r1" in failure.message


# -- RUNNING: liveness and the execution backstop ------------------------------------------------


def test_a_silent_worker_is_worker_lost_after_the_heartbeat_timeout() -> None:
    tracker = make_tracker(heartbeat_timeout=2.0)
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    running(tracker, record, now=100.2)
    assert not tracker.expire(102.1)  # last sign of life was the running reply at 100.2
    actions = tracker.expire(102.2)
    assert actions.cancel == ["r1"]
    resolve(actions)
    failure = settled_failure(record)
    assert failure.check(errors.WorkerLost)
    assert "heartbeat_timeout=2.0" in failure.message and "w1" in failure.message
    assert tracker.directory.get("w1") is None  # forgotten until it heartbeats again


def test_a_busy_healthy_worker_is_never_declared_lost() -> None:
    tracker = make_tracker(heartbeat_timeout=2.0)
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=0.0)
    record = make_record()
    tracker.add(record, now=0.0)
    running(tracker, record, now=0.1)
    for tick in range(1, 500):
        now = tick * 0.5
        resolve(tracker.on_heartbeat(FakeHeartbeat("w1", running=["r1"]), now=now))
        resolve(tracker.expire(now + 0.4))
    assert record.state is RequestState.RUNNING and not record.future.done()


def test_heartbeats_that_stop_listing_the_request_are_worker_lost() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    running(tracker, record, now=100.1)
    # One heartbeat without it (it may have been sent before the worker started it): no verdict.
    resolve(tracker.on_heartbeat(FakeHeartbeat("w1", running=[]), now=100.2))
    assert not record.future.done()
    # A burst (e.g. an answer to Discover right after a regular one) is not a second interval.
    resolve(tracker.on_heartbeat(FakeHeartbeat("w1", running=[]), now=100.3))
    assert not record.future.done()
    actions = tracker.on_heartbeat(FakeHeartbeat("w1", running=[]), now=101.2)
    resolve(actions)
    failure = settled_failure(record)
    assert failure.check(errors.WorkerLost)
    assert "no longer lists" in failure.message
    assert actions.cancel == ["r1"]


def test_a_missed_heartbeat_then_listed_again_or_then_a_result_is_fine() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    first, second = make_record("a"), make_record("b")
    tracker.add(first, now=100.0)
    tracker.add(second, now=100.0)
    running(tracker, first, now=100.1)
    running(tracker, second, now=100.1)
    tracker.on_heartbeat(FakeHeartbeat("w1", running=[]), now=100.2)
    tracker.on_heartbeat(FakeHeartbeat("w1", running=["a", "b"]), now=101.2)
    # "b" finished: the heartbeat saying so overtakes the success reply.
    tracker.on_heartbeat(FakeHeartbeat("w1", running=["a"]), now=102.2)
    resolve(tracker.on_response(FakeResponse("b", 1, "w1", "success", result=7), now=102.3))
    tracker.on_heartbeat(FakeHeartbeat("w1", running=["a"]), now=103.2)
    assert not first.future.done()
    assert second.future.result(timeout=0) == 7


def test_running_past_execution_timeout_plus_margin_is_execution_timeout() -> None:
    tracker = make_tracker(heartbeat_timeout=2.0)
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record(execution_timeout=1.5)
    tracker.add(record, now=100.0)
    running(tracker, record, now=100.0)
    for now in (101.0, 102.0, 103.0):
        tracker.on_heartbeat(FakeHeartbeat("w1", running=["r1"]), now=now)
    assert not tracker.expire(103.4)
    actions = tracker.expire(103.5)
    resolve(actions)
    failure = settled_failure(record)
    assert failure.check(errors.ExecutionTimeout)
    assert "execution_timeout=1.5" in failure.message
    assert actions.cancel == ["r1"]


def test_the_workers_own_execution_timeout_report_wins() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record(execution_timeout=1.0)
    tracker.add(record, now=100.0)
    running(tracker, record, now=100.0)
    remote = Failure.from_exception(errors.ExecutionTimeout("ran past 1.0 s on w1")).to_dict()
    resolve(tracker.on_response(FakeResponse("r1", 1, "w1", "failure", failure=remote), 101.1))
    failure = settled_failure(record)
    assert failure.check(errors.ExecutionTimeout) and failure.message == "ran past 1.0 s on w1"
    with pytest.raises(errors.ExecutionTimeout):
        failure.reraise()


# -- responses -----------------------------------------------------------------------------------


def test_progress_is_reported_in_order_and_implies_running() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    seen: list[tuple[float, dict[str, Any]]] = []
    record = make_record(progress=lambda f, d: seen.append((f, d)))
    tracker.add(record, now=100.0)
    for i, fraction in enumerate((0.25, 0.5, 1.0)):
        actions = tracker.on_response(
            FakeResponse("r1", 1, "w1", "progress", progress=fraction, details={"step": i}), 100.1
        )
        for callback, value, details in actions.progress:
            callback(value, details)
    assert record.state is RequestState.RUNNING
    assert seen == [(0.25, {"step": 0}), (0.5, {"step": 1}), (1.0, {"step": 2})]


def test_success_then_late_duplicates_are_ignored_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    running(tracker, record, now=100.0)
    resolve(tracker.on_response(FakeResponse("r1", 1, "w1", "success", result=[1, 2]), 100.1))
    assert record.future.result(timeout=0) == [1, 2]
    assert record.state is RequestState.DONE
    with caplog.at_level(logging.DEBUG, logger="workerflow.executors.remote_requests"):
        assert not tracker.on_response(FakeResponse("r1", 1, "w1", "success", result=3), 100.2)
        assert not tracker.on_response(FakeResponse("nope", 1, "w1", "success"), 100.2)
    assert "late success response for settled request r1" in caplog.text
    assert "unknown request nope" in caplog.text


def test_a_remote_exception_comes_back_as_its_original_type() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    try:
        raise ValueError("bad size")
    except ValueError as exc:
        remote = Failure.from_exception(exc).to_dict()
    resolve(tracker.on_response(FakeResponse("r1", 1, "w1", "failure", failure=remote), 100.1))
    failure = settled_failure(record)
    assert failure.exception is None  # rebuilt from the wire, not the live object
    with pytest.raises(ValueError, match="bad size"):
        failure.reraise()


def test_an_unknown_remote_type_is_a_remote_error() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    remote = {
        "version": 1,
        "exception_type_names": ["nowhere.CustomError", "builtins.Exception"],
        "message": "custom",
        "traceback_text": "Traceback ...",
        "cause": None,
    }
    resolve(tracker.on_response(FakeResponse("r1", 1, "w1", "failure", failure=remote), 100.1))
    failure = settled_failure(record)
    assert failure.check("nowhere.CustomError")
    with pytest.raises(errors.RemoteError, match="custom"):
        failure.reraise()


def test_message_rejected_from_the_worker_is_a_failure() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    rejected = Failure.from_exception(errors.MessageRejected("bad signature")).to_dict()
    resolve(tracker.on_response(FakeResponse("r1", 1, "w1", "failure", failure=rejected), 100.0))
    assert settled_failure(record).check(errors.MessageRejected)


def test_an_unreadable_failure_is_a_serialization_error() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    bad = {"version": 99}
    resolve(tracker.on_response(FakeResponse("r1", 1, "w1", "failure", failure=bad), 100.0))
    failure = settled_failure(record)
    assert failure.check(errors.SerializationError) and "cannot be read" in failure.message


def test_wrong_attempt_or_a_second_worker_is_ignored() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=100.0)
    record = make_record()
    tracker.add(record, now=100.0)
    assert not tracker.on_response(FakeResponse("r1", 2, "w1", "success", result=1), 100.0)
    assert record.state is RequestState.PENDING
    running(tracker, record, now=100.0, worker="w1")
    assert not tracker.on_response(FakeResponse("r1", 1, "w2", "success", result=2), 100.1)
    resolve(tracker.on_response(FakeResponse("r1", 1, "w1", "success", result=3), 100.2))
    assert record.future.result(timeout=0) == 3


def test_settle_all_returns_each_record_with_its_state() -> None:
    tracker = make_tracker()
    waiting = make_record("w", task_type="x:Y")
    tracker.add(waiting, now=0.0)
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=0.0)
    pending = make_record("p")
    tracker.add(pending, now=0.0)
    states = {r.id: s for r, s in tracker.settle_all("stopping")}
    assert states == {"w": RequestState.WAITING, "p": RequestState.PENDING}
    assert len(tracker) == 0


def test_refresh_liveness_forgives_a_gap_on_our_side() -> None:
    tracker = make_tracker(heartbeat_timeout=2.0)
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=0.0)
    record = make_record()
    tracker.add(record, now=0.0)
    running(tracker, record, now=0.0)
    tracker.refresh_liveness(now=30.0)
    assert not tracker.expire(31.0)
    resolve(tracker.expire(32.0))
    assert settled_failure(record).check(errors.WorkerLost)


def test_settled_requests_do_not_pile_up_in_the_deadline_heap() -> None:
    tracker = make_tracker()
    tracker.on_heartbeat(FakeHeartbeat("w1"), now=0.0)
    for i in range(5000):
        record = make_record(f"r{i}", execution_timeout=5.0)
        tracker.add(record, now=0.0)
        tracker.on_response(FakeResponse(record.id, 1, "w1", "running"), 0.0)
        tracker.on_response(FakeResponse(record.id, 1, "w1", "success"), 0.0)
    assert len(tracker) == 0
    assert len(tracker._deadlines) <= 64 + 2
