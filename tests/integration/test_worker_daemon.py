"""The worker daemon's protocol against real brokers: real ``python -m worker`` subprocesses driven
by :class:`worker.testing.Client` (requests out, responses and heartbeats in), and bad input."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator

import kombu
import msgpack
import pytest
import redis

from proxy import names
from proxy.codec import CONTENT_ENCODING, CONTENT_TYPE
from proxy.messages import Cancel, Discover, Response
from tests.conftest import AMQP_URL, REDIS_URL
from tests.support import WorkerProcess, forget_namespace, running_workers, stop_gracefully
from worker.testing import Client
from workerflow.failure import Failure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TASKS = "tests.remote_tasks"
SECRET = "worker-test-secret"


def task(name: str) -> str:
    return f"{TASKS}:{name}"


def publish_raw(broker_url: str, namespace: str, body: bytes) -> None:
    """Put ``body`` on the request queue as a kombu message (bypassing the codec)."""
    with kombu.Connection(broker_url) as connection:
        connection.Producer().publish(
            body, routing_key=names.request_queue(namespace), exchange="",
            content_type=CONTENT_TYPE, content_encoding=CONTENT_ENCODING,
        )  # fmt: skip


def type_names(response: Response) -> list[str]:
    assert response.state == "failure" and response.failure is not None, response
    return list(response.failure["exception_type_names"])


@pytest.fixture(scope="module", params=["redis", "amqp"])
def module_broker(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(scope="module")
def served(module_broker: str) -> Iterator[tuple[WorkerProcess, str, str]]:
    """One worker per broker shared by the protocol tests (each test uses fresh request ids)."""
    namespace = f"wftest-{uuid.uuid4().hex[:12]}"
    args = ["--concurrency", "2", "--heartbeat-interval", "0.3"]
    with running_workers(module_broker, namespace, args=args) as (worker,):
        yield worker, module_broker, namespace
        stop_gracefully(worker)
    forget_namespace(namespace, REDIS_URL, AMQP_URL)


@pytest.fixture
def client(served: tuple[WorkerProcess, str, str]) -> Iterator[Client]:
    _, broker, namespace = served
    c = Client(broker, namespace=namespace)
    yield c
    c.close()


# -- the protocol, on both brokers -------------------------------------------------------------


def test_execute_replies_running_then_success(client: Client) -> None:
    request = client.request(task("Add"), {"a": 2, "b": 40})
    response = client.result(request)
    assert response.state == "success" and response.result == 42
    assert client.states(request) == ["running", "success"]
    assert response.attempt == 1 and response.worker_id
    function = client.request(task("multiply"), {"a": 6, "b": 7})
    assert client.result(function).result == 42
    coroutine = client.request(task("AsyncAdd"), {"a": 1, "b": 2})
    assert client.result(coroutine).result == 3


def test_failing_task_replies_its_failure(client: Client) -> None:
    request = client.request(task("Fail"), {"message": "remote boom"})
    response = client.result(request)
    assert type_names(response)[:2] == ["builtins.ValueError", "builtins.Exception"]
    failure = Failure.from_dict(response.failure or {})
    assert failure.message == "remote boom"
    assert "raise ValueError(message)" in failure.traceback_text
    assert client.states(request) == ["running", "failure"]


def test_progress_arrives_in_order_and_ends_at_one(client: Client) -> None:
    request = client.request(task("Sleep"), {"seconds": 0.6, "steps": 6})
    assert client.result(request).result == 0.6
    states = client.states(request)
    assert states[0] == "running" and states[-1] == "success"
    values = [r.progress for r in client.responses[request.id] if r.state == "progress"]
    assert len(values) >= 2 and values == sorted(values) and values[-1] == 1.0
    steps = [r.details.get("step") for r in client.responses[request.id] if r.state == "progress"]
    assert steps[-1] == 6


def test_progress_is_coalesced(client: Client) -> None:
    request = client.request(task("ProgressFlood"), {"count": 200_000})
    assert client.result(request, 30).result == 200_000
    values = [r.progress for r in client.responses[request.id] if r.state == "progress"]
    assert values[-1] == 1.0 and values == sorted(values)
    assert len(values) < 200  # 200k updates became a handful of replies


def test_revert_runs_revert_with_result_and_failures(client: Client, tmp_path) -> None:
    journal = tmp_path / "journal"
    executed = client.request(task("RecordRevert"), {"journal": str(journal)})
    assert client.result(executed).result == "recordrevert"
    revert = client.request(
        task("RecordRevert"), {"journal": str(journal)}, action="revert", result="recordrevert"
    )
    assert client.result(revert).state == "success"
    assert journal.read_text().splitlines() == ["execute:recordrevert", "revert:recordrevert"]

    failure = Failure.from_exception(ValueError("it failed")).to_dict()
    flow = {"other": Failure.from_exception(KeyError("k")).to_dict()}
    reported = client.request(
        task("ReportRevert"), action="revert", failure=failure, flow_failures=flow
    )
    assert client.result(reported).result == {
        "failure": ["builtins.ValueError", "builtins.Exception", "builtins.BaseException"],
        "msg": "it failed",
        "flow_failures": {"other": "builtins.KeyError"},
    }


def test_unserializable_result_is_a_serialization_failure(client: Client) -> None:
    response = client.result(client.request(task("NotSerializable")))
    assert type_names(response)[0] == "workerflow.errors.SerializationError"
    assert "msgpack" in response.failure["message"]  # type: ignore[index]
    assert client.result(client.request(task("Add"), {"a": 1, "b": 1})).result == 2


def test_expired_and_cancelled_requests_do_not_run(client: Client, tmp_path) -> None:
    journal = tmp_path / "journal"
    expired = client.request(task("RecordRevert"), {"journal": str(journal)}, deadline_in=-1)
    response = client.result(expired)
    assert type_names(response)[0] == "workerflow.errors.RequestTimeout"
    assert "running" not in client.states(expired)

    cancelled = client.make(task("RecordRevert"), {"journal": str(journal)})
    seen = len(client.heartbeats)
    client.bus.broadcast(Cancel(request_id=cancelled.id))
    # The cancel (fanout) and the request (queue) travel separately: let the worker's control
    # thread read the cancel first, i.e. wait until it has heartbeaten twice since.
    client.wait(lambda: len(client.heartbeats) > seen + 1, 5, "two heartbeats")
    client.bus.send_request("default", cancelled)
    marker = client.request(task("Add"), {"a": 1, "b": 2})
    assert client.result(marker).result == 3
    assert client.responses[cancelled.id] == []
    assert not journal.exists()


def test_thread_pool_execution_timeout(client: Client) -> None:
    started = time.monotonic()
    slow = client.request(task("Sleep"), {"seconds": 1.5, "steps": 15}, execution_timeout=0.3)
    response = client.result(slow)
    assert time.monotonic() - started < 1.4
    assert type_names(response)[0] == "workerflow.errors.ExecutionTimeout"
    assert client.result(client.request(task("Add"), {"a": 2, "b": 2})).result == 4


def test_heartbeats_arrive_at_the_interval_and_list_running(
    client: Client, served: tuple[WorkerProcess, str, str]
) -> None:
    worker, _, _ = served
    slow = client.request(task("Sleep"), {"seconds": 1.2, "steps": 4})
    client.wait(lambda: "running" in client.states(slow), 10, "running")

    def listed() -> bool:
        return any(slow.id in hb.running for _, hb in client.heartbeats)

    client.wait(listed, 5, "a heartbeat listing the running request")
    client.result(slow)
    mine = [(t, hb) for t, hb in client.heartbeats if hb.pid == worker.pid]
    assert len(mine) >= 3
    beat = mine[-1][1]
    assert beat.interval == 0.3 and beat.concurrency == 2 and beat.queues == ["default"]
    assert f"{TASKS}:Add" in beat.task_types and beat.version
    assert 0 <= beat.free_slots <= 2 and not beat.stopping
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(mine)]
    assert max(gaps) < 0.3 * 3, gaps  # at the interval (with slack for a loaded machine)
    # Discover: a heartbeat at once, not at the next interval.
    seen = len(client.heartbeats)
    for _ in range(3):
        client.bus.broadcast(Discover(sender="test"))
    client.wait(lambda: len(client.heartbeats) >= seen + 3, 2, "heartbeats answering discover")


# -- bad input ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(module_broker: str) -> Iterator[tuple[WorkerProcess, str, str]]:
    """A worker that requires signed messages."""
    namespace = f"wftest-{uuid.uuid4().hex[:12]}"
    with running_workers(
        module_broker, namespace, args=["--concurrency", "1", "--secret", SECRET]
    ) as (worker,):
        yield worker, module_broker, namespace
        stop_gracefully(worker)
    forget_namespace(namespace, REDIS_URL, AMQP_URL)


def test_bad_input_is_rejected_and_the_worker_stays_up(
    signed: tuple[WorkerProcess, str, str],
) -> None:
    worker, broker, namespace = signed
    good = Client(broker, namespace=namespace, secret=SECRET)
    unsigned = Client(broker, namespace=namespace)
    forged = Client(broker, namespace=namespace, secret="not-the-secret")
    big = Client(broker, namespace=namespace, secret=SECRET, max_message_size=8 << 20)
    try:
        publish_raw(broker, namespace, b"\x00\xffgarbage")
        worker.wait_for_line("not a msgpack envelope")
        wrong_version = good.make(task("Add"), {"a": 1, "b": 2})
        body = msgpack.packb(wrong_version.to_dict(), use_bin_type=True)
        publish_raw(broker, namespace, msgpack.packb([2, "request", body, None], use_bin_type=True))
        worker.wait_for_line("unsupported protocol version 2")
        oversized = big.request(task("Add"), {"a": "x" * (2 << 20), "b": "y"})
        worker.wait_for_line("exceeds max_message_size")

        # Replies to the unsigned and the forged request go to the good client: only it can
        # verify the worker's signed replies.
        unsigned_request, forged_request = good.make(task("Add")), good.make(task("Add"))
        unsigned.bus.send_request("default", unsigned_request)
        forged.bus.send_request("default", forged_request)
        for request, reason in [
            (good.request(task("NoSuchTask")), "unknown task type"),
            (unsigned_request, "unsigned message"),
            (forged_request, "bad signature"),
        ]:
            response = good.result(request)
            assert type_names(response)[0] == "workerflow.errors.MessageRejected", response
            assert reason in response.failure["message"]  # type: ignore[index]
            assert "running" not in good.states(request)
            worker.wait_for_line(reason)
        assert good.responses[oversized.id] == [] and big.responses[oversized.id] == []

        ok = good.request(task("Add"), {"a": 20, "b": 22})
        assert good.result(ok).result == 42
        assert worker.process.poll() is None
    finally:
        for c in (good, unsigned, forged, big):
            c.close()


def test_raw_garbage_on_redis_list(redis_url: str, namespace: str) -> None:
    """Bytes that are not even a kombu message, pushed straight onto the Redis list."""
    with running_workers(redis_url, namespace, args=["--concurrency", "1"]) as (worker,):
        client = Client(redis_url, namespace=namespace)
        try:
            r = redis.Redis.from_url(redis_url)
            r.lpush(names.request_queue(namespace), b"\x93\x01garbage{not json")
            worker.wait_for_line("undecodable")
            assert client.result(client.request(task("Add"), {"a": 1, "b": 1})).result == 2
        finally:
            client.close()
            stop_gracefully(worker)
