"""WorkerExecutor wired to a fake in-process Bus: publishing, consumer thread, timeouts, shutdown.

The fake bus records what the executor publishes and lets the test play the worker by queueing
responses and heartbeats that the executor's consumer thread drains, so every fault is produced
quickly and deterministically, without a broker.
"""

from __future__ import annotations

import queue
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.codec import Codec
from proxy.errors import BrokerUnavailable, InvalidMessage
from proxy.messages import Cancel, Discover, Heartbeat, Request, Response
from proxy.settings import BusSettings
from tests.support import wait_until
from workerflow import Task, errors
from workerflow.executors.worker import WorkerExecutor
from workerflow.failure import Failure

NS = "wfunit"


class Add(Task):
    provides = "sum"

    def execute(self, a: int, b: int) -> int:
        return a + b


class Undo(Task):
    def execute(self, x: int) -> int:
        return x

    def revert(self, x: int, result: Any, **kwargs: Any) -> None:
        pass


class Slow(Task):
    execution_timeout = 0.2

    def execute(self) -> None:
        pass


@dataclass(frozen=True)
class FakeDelivery:
    message: Any
    error: InvalidMessage | None = None

    def ack(self) -> None:
        pass


class Hub:
    """The 'broker' shared by the fake buses of one executor; the test plays the workers."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.requests: list[tuple[str, Request]] = []
        self.broadcasts: list[Any] = []
        self.deleted: list[str] = []
        self.declared: list[str] = []
        self.on_request: Callable[[Request], None] | None = None
        self.keep = True
        self.fail_connect = False
        self.fail_publish = False
        self.fail_drain = threading.Event()
        self.buses: list[FakeBus] = []
        self.lock = threading.Lock()

    def reply(self, request: Request, state: str, worker: str = "w1", **fields: Any) -> None:
        response = Response(request.id, request.attempt, worker, state, **fields)
        self.inbox.put(("reply", response))

    def heartbeat(self, worker: str = "w1", **fields: Any) -> None:
        values: dict[str, Any] = {
            "worker_id": worker,
            "hostname": "host",
            "pid": 1,
            "queues": ["default"],
            "task_types": [Add().task_type, Undo().task_type, Slow().task_type],
            "concurrency": 4,
            "free_slots": 4,
            "interval": 0.1,
            "running": [],
            "version": "0",
        }
        values.update(fields)
        self.inbox.put(("control", Heartbeat(**values)))

    def published(self, count: int = 1) -> list[Request]:
        wait_until(lambda: len(self.requests) >= count, 5, what=f"{count} published request(s)")
        return [r for _, r in self.requests]

    def cancels(self) -> list[str]:
        return [m.request_id for m in self.broadcasts if isinstance(m, Cancel)]


class FakeBus:
    """Implements the part of proxy.bus.Bus the executor uses."""

    def __init__(self, hub: Hub, settings: BusSettings) -> None:
        self.hub = hub
        self.codec = Codec(secret=settings.secret, max_message_size=settings.max_message_size)
        self.on_reply: Callable[[Any], None] | None = None
        self.on_control: Callable[[Any], None] | None = None
        self.closed = False
        hub.buses.append(self)

    def connect(self) -> None:
        if self.hub.fail_connect:
            raise BrokerUnavailable("redis://127.0.0.1:1/0 did not answer within 0.1 s")

    def close(self) -> None:
        self.closed = True

    def send_request(self, queue_name: str, request: Request) -> None:
        self.codec.encode(request)
        if self.hub.fail_publish:
            raise BrokerUnavailable("publish failed after retrying")
        if self.hub.keep:
            with self.hub.lock:
                self.hub.requests.append((queue_name, request))
        if self.hub.on_request is not None:
            self.hub.on_request(request)

    def send_response(self, reply_to: str, response: Response) -> None:
        self.codec.encode(response)
        self.hub.inbox.put(("reply", response))

    def broadcast(self, message: Any) -> None:
        self.hub.broadcasts.append(message)

    def declare_reply_queue(self, name: str) -> None:
        self.hub.declared.append(name)

    def delete_queue(self, name: str) -> None:
        self.hub.deleted.append(name)

    def consume_replies(self, name: str, on_message: Callable[[Any], None]) -> None:
        self.on_reply = on_message

    def consume_control(self, subscriber_id: str, on_message: Callable[[Any], None]) -> None:
        self.on_control = on_message

    def drain(self, timeout: float) -> bool:
        if self.hub.fail_drain.is_set():
            self.hub.fail_drain.clear()
            raise BrokerUnavailable("connection lost")
        try:
            where, message = (
                self.hub.inbox.get(timeout=timeout)
                if timeout > 0
                else (self.hub.inbox.get_nowait())
            )
        except queue.Empty:
            return False
        callback = self.on_reply if where == "reply" else self.on_control
        assert callback is not None
        callback(FakeDelivery(message))
        return True


class FakeBusExecutor(WorkerExecutor):
    def __init__(self, hub: Hub, **kwargs: Any) -> None:
        self.hub = hub
        kwargs.setdefault("namespace", NS)
        super().__init__("memory://", **kwargs)

    def _new_bus(self) -> Any:
        return FakeBus(self.hub, self.settings)


@pytest.fixture
def hub() -> Hub:
    return Hub()


def value_of(future: Any, timeout: float = 5.0) -> Any:
    return future.result(timeout=timeout)


def failure_of(future: Any, timeout: float = 5.0) -> Failure:
    value = future.result(timeout=timeout)
    assert isinstance(value, Failure), f"expected a Failure, got {value!r}"
    return value


# -- the happy path ------------------------------------------------------------------------------


def test_start_broadcasts_discover_and_declares_its_reply_queue(hub: Hub) -> None:
    with FakeBusExecutor(hub) as executor:
        assert hub.declared == [executor.reply_queue]
        assert executor.reply_queue == f"{NS}.replies.{executor.executor_id}"
        wait_until(lambda: any(isinstance(m, Discover) for m in hub.broadcasts), 2)
    assert executor.reply_queue in hub.deleted
    assert all(bus.closed for bus in hub.buses)


def test_execute_round_trip_with_progress_in_order(hub: Hub) -> None:
    hub.heartbeat()
    seen: list[tuple[float, dict[str, Any]]] = []
    with FakeBusExecutor(hub) as executor:
        wait_until(
            lambda: executor._tracker.directory.serves(
                Add().task_type, "default", time.monotonic()
            ),
            2,
        )
        future = executor.execute(
            Add(), {"a": 1, "b": 2}, attempt=3, progress=lambda f, d: seen.append((f, d))
        )
        [request] = hub.published()
        queue_name, _ = hub.requests[0]
        assert queue_name == "default"
        assert (request.task_type, request.task_name, request.action) == (
            Add().task_type,
            "Add",
            "execute",
        )
        assert request.arguments == {"a": 1, "b": 2} and request.attempt == 3
        assert request.reply_to == executor.reply_queue
        assert 59 < request.deadline - time.time() <= 60
        hub.reply(request, "running")
        for i in (1, 2, 3):
            hub.reply(request, "progress", progress=i / 4, details={"step": i})
        hub.reply(request, "success", result=3)
        assert value_of(future) == 3
    assert seen == [(0.25, {"step": 1}), (0.5, {"step": 2}), (0.75, {"step": 3})]


def test_a_request_waits_for_discovery_then_is_published(hub: Hub) -> None:
    with FakeBusExecutor(hub, discovery_timeout=5.0) as executor:
        future = executor.execute(Add(), {"a": 1, "b": 2})
        time.sleep(0.05)  # give a wrong implementation the chance to publish early
        assert hub.requests == []
        hub.heartbeat()
        [request] = hub.published()
        assert request.deadline - time.time() > 59
        hub.reply(request, "success", result=3)
        assert value_of(future) == 3


def test_revert_carries_result_failure_and_flow_failures(hub: Hub) -> None:
    hub.heartbeat()
    boom = Failure.from_exception(ValueError("boom"))
    with FakeBusExecutor(hub) as executor:
        first = executor.revert(Undo(), {"x": 1}, result=5, flow_failures={"other": boom})
        second = executor.revert(Undo(), {"x": 1}, result=boom, flow_failures={"Undo": boom})
        one, two = hub.published(2)
        assert one.action == "revert" and one.result == 5 and one.failure is None
        assert one.flow_failures == {"other": boom.to_dict()}
        assert two.result is None and two.failure == boom.to_dict()
        hub.reply(one, "success")
        hub.reply(two, "success")
        assert value_of(first) is None and value_of(second) is None


def test_task_queue_is_honoured_and_secret_may_be_a_str(hub: Hub) -> None:
    hub.heartbeat(queues=["gpu", "default"])
    with FakeBusExecutor(hub, secret="s3cret", queue="default") as executor:
        assert executor.settings.secret == b"s3cret"
        executor.execute(Add(queue="gpu"), {"a": 1, "b": 1})
        hub.published()
        assert hub.requests[0][0] == "gpu"


def test_remote_failures_come_back_as_the_original_type(hub: Hub) -> None:
    hub.heartbeat()
    with FakeBusExecutor(hub) as executor:
        future = executor.execute(Add(), {"a": 1, "b": 2})
        [request] = hub.published()
        try:
            raise ValueError("negative size")
        except ValueError as exc:
            hub.reply(request, "failure", failure=Failure.from_exception(exc).to_dict())
        failure = failure_of(future)
        with pytest.raises(ValueError, match="negative size"):
            failure.reraise()


def test_message_rejected_by_the_worker(hub: Hub) -> None:
    hub.heartbeat()
    with FakeBusExecutor(hub) as executor:
        future = executor.execute(Add(), {"a": 1, "b": 2})
        [request] = hub.published()
        rejected = Failure.from_exception(errors.MessageRejected("unknown task 'x'"))
        hub.reply(request, "failure", failure=rejected.to_dict())
        assert failure_of(future).check(errors.MessageRejected)


# -- faults, each within its bound ---------------------------------------------------------------


def test_no_worker_available_within_the_discovery_timeout(hub: Hub) -> None:
    with FakeBusExecutor(hub, discovery_timeout=0.3) as executor:
        started = time.monotonic()
        failure = failure_of(executor.execute(Add(), {"a": 1, "b": 2}))
        elapsed = time.monotonic() - started
    assert failure.check(errors.NoWorkerAvailable)
    assert "discovery_timeout=0.3" in failure.message and "'Add'" in failure.message
    assert 0.3 <= elapsed < 0.6
    assert hub.requests == []  # never published, so nothing is left in a queue


def test_request_timeout_cancels_the_request(hub: Hub) -> None:
    hub.heartbeat(interval=10.0)
    with FakeBusExecutor(hub, request_timeout=0.3) as executor:
        future = executor.execute(Add(), {"a": 1, "b": 2})
        [request] = hub.published()
        started = time.monotonic()
        failure = failure_of(future)
        elapsed = time.monotonic() - started
        assert failure.check(errors.RequestTimeout)
        assert "request_timeout=0.3" in failure.message and request.id in failure.message
        assert elapsed < 0.6
        wait_until(lambda: request.id in hub.cancels(), 2, what="a Cancel broadcast")
        hub.reply(request, "success", result=3)  # late: ignored, does not crash the consumer
        hub.heartbeat()
        second = executor.execute(Add(), {"a": 2, "b": 2})
        hub.reply(hub.published(2)[1], "success", result=4)
        assert value_of(second) == 4


def test_worker_lost_when_its_heartbeats_stop(hub: Hub) -> None:
    hub.heartbeat()
    with FakeBusExecutor(hub, heartbeat_timeout=0.4) as executor:
        future = executor.execute(Add(), {"a": 1, "b": 2})
        [request] = hub.published()
        hub.reply(request, "running")
        started = time.monotonic()
        failure = failure_of(future)
        elapsed = time.monotonic() - started
    assert failure.check(errors.WorkerLost) and "heartbeat_timeout=0.4" in failure.message
    assert elapsed < 0.4 + 0.3


def test_a_busy_worker_that_heartbeats_is_not_lost(hub: Hub) -> None:
    hub.heartbeat()
    with FakeBusExecutor(hub, heartbeat_timeout=0.3) as executor:
        future = executor.execute(Add(), {"a": 1, "b": 2})
        [request] = hub.published()
        hub.reply(request, "running")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            hub.heartbeat(running=[request.id])
            time.sleep(0.05)
            assert not future.done()
        hub.reply(request, "success", result=3)
        assert value_of(future) == 3


def test_execution_timeout_backstop(hub: Hub) -> None:
    hub.heartbeat()
    with FakeBusExecutor(hub, heartbeat_timeout=0.3) as executor:
        future = executor.execute(Slow(), {})
        [request] = hub.published()
        assert request.execution_timeout == 0.2
        hub.reply(request, "running")
        stop = threading.Event()

        def keep_alive() -> None:
            while not stop.is_set():
                hub.heartbeat(running=[request.id])
                stop.wait(0.05)

        pump = threading.Thread(target=keep_alive)
        pump.start()
        try:
            failure = failure_of(future, timeout=3)
        finally:
            stop.set()
            pump.join()
    assert failure.check(errors.ExecutionTimeout) and "execution_timeout=0.2" in failure.message


# -- errors on our side --------------------------------------------------------------------------


def test_unencodable_arguments_fail_at_submit_with_serialization_error(hub: Hub) -> None:
    with FakeBusExecutor(hub, discovery_timeout=30) as executor:
        # No worker known yet: the request would wait, but it can never be sent.
        failure = failure_of(executor.execute(Add(), {"a": object(), "b": 2}), timeout=1)
        assert failure.check(errors.SerializationError)
        assert "arguments['a']" in failure.message or "arguments" in failure.message
        hub.heartbeat()
        wait_until(lambda: executor._tracker.directory.live(time.monotonic()), 2)
        failure = failure_of(executor.execute(Add(), {"a": 1, "b": {1, 2}}), timeout=1)
        assert failure.check(errors.SerializationError) and "set" in failure.message
        failure = failure_of(executor.execute(Add(), {"a": "x" * (2 << 20), "b": 1}), timeout=1)
        assert failure.check(errors.SerializationError) and "max_message_size" in failure.message
        assert len(executor._tracker) == 0


def test_non_string_argument_keys_are_a_serialization_error(hub: Hub) -> None:
    with FakeBusExecutor(hub) as executor:
        failure = failure_of(executor.execute(Add(), {1: 2}), timeout=1)  # type: ignore[dict-item]
        assert failure.check(errors.SerializationError)


def test_unreachable_broker_at_publish_is_an_executor_error(hub: Hub) -> None:
    hub.heartbeat()
    with FakeBusExecutor(hub) as executor:
        wait_until(lambda: executor._tracker.directory.live(time.monotonic()), 2)
        hub.fail_publish = True
        failure = failure_of(executor.execute(Add(), {"a": 1, "b": 2}), timeout=1)
        assert failure.check(errors.ExecutorError) and "cannot publish" in failure.message
        assert "publish failed" in failure.message


def test_unreachable_broker_at_start_raises_executor_error(hub: Hub) -> None:
    hub.fail_connect = True
    executor = FakeBusExecutor(hub)
    with pytest.raises(errors.ExecutorError, match="cannot reach its broker"):
        executor.start()
    failure = failure_of(executor.execute(Add(), {"a": 1, "b": 2}), timeout=1)
    assert failure.check(errors.ExecutorError)


def test_losing_the_broker_while_draining_fails_in_flight_then_recovers(hub: Hub) -> None:
    hub.heartbeat()
    with FakeBusExecutor(hub) as executor:
        future = executor.execute(Add(), {"a": 1, "b": 2})
        hub.published()
        hub.fail_drain.set()
        failure = failure_of(future)
        assert failure.check(errors.ExecutorError) and "unreachable" in failure.message
        # The consumer reconnects with a fresh bus and the executor keeps working.
        hub.heartbeat()
        second = executor.execute(Add(), {"a": 2, "b": 2})
        hub.reply(hub.published(2)[1], "success", result=4)
        assert value_of(second) == 4


def test_stop_fails_in_flight_requests_and_cancels_pending_ones(hub: Hub) -> None:
    hub.heartbeat()
    executor = FakeBusExecutor(hub)
    executor.start()
    executor.start()  # idempotent
    waiting = executor.execute(Add(queue="nowhere"), {"a": 1, "b": 2})
    pending = executor.execute(Add(), {"a": 1, "b": 2})
    [request] = hub.published()
    executor.stop()
    executor.stop()  # idempotent
    assert failure_of(pending).check(errors.ExecutorError)
    assert failure_of(waiting).check(errors.ExecutorError)
    assert request.id in hub.cancels()
    late = failure_of(executor.execute(Add(), {"a": 1, "b": 2}))
    assert late.check(errors.ExecutorError) and "stopped" in late.message


def test_a_failing_progress_callback_does_not_break_the_request(hub: Hub) -> None:
    hub.heartbeat()

    def broken(fraction: float, details: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    with FakeBusExecutor(hub) as executor:
        future = executor.execute(Add(), {"a": 1, "b": 2}, progress=broken)
        [request] = hub.published()
        hub.reply(request, "progress", progress=0.5)
        hub.reply(request, "success", result=3)
        assert value_of(future) == 3


def test_many_threads_submit_at_once(hub: Hub) -> None:
    hub.heartbeat()
    hub.keep = False
    hub.on_request = lambda request: hub.reply(request, "success", result=request.arguments["a"])
    with FakeBusExecutor(hub) as executor:
        wait_until(lambda: executor._tracker.directory.live(time.monotonic()), 2)
        results: list[Any] = []

        def engine(offset: int) -> None:
            futures = [executor.execute(Add(), {"a": offset + i, "b": 0}) for i in range(200)]
            results.extend(value_of(f) for f in futures)

        threads = [threading.Thread(target=engine, args=(k * 1000,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(results) == sorted(k * 1000 + i for k in range(8) for i in range(200))


def test_memory_per_in_flight_request_is_under_4_kib(hub: Hub) -> None:
    hub.heartbeat()
    hub.keep = False
    count = 2000
    with FakeBusExecutor(hub) as executor:
        wait_until(lambda: executor._tracker.directory.live(time.monotonic()), 2)
        task = Add()
        arguments = {"a": 1, "b": 2}
        executor.execute(task, arguments)  # warm caches
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            futures = [executor.execute(task, arguments) for _ in range(count)]
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        per_request = grown / count
        print(f"memory per in-flight request: {per_request:.0f} bytes")
        assert len(executor._tracker) == count + 1
        assert per_request < 4096
    assert all(failure_of(f).check(errors.ExecutorError) for f in futures)


def test_a_bug_in_handling_one_message_does_not_stop_the_timer(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeBusExecutor(hub, discovery_timeout=0.3) as executor:
        real = executor._tracker.on_heartbeat
        calls: list[int] = []

        def broken_once(heartbeat: Heartbeat, now: float) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("bug")
            return real(heartbeat, now)

        monkeypatch.setattr(executor._tracker, "on_heartbeat", broken_once)
        hub.heartbeat(task_types=["nothing:Here"])
        failure = failure_of(executor.execute(Add(), {"a": 1, "b": 2}), timeout=2)
        assert failure.check(errors.NoWorkerAvailable)
        assert calls == [1]
