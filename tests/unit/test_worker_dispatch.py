"""Dispatcher, progress coalescing and cancel memory, with fake pool and replier (no broker)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from proxy import names
from proxy.errors import InvalidMessage
from proxy.messages import Heartbeat, Request
from tests.support import wait_until
from worker.dispatcher import Dispatcher
from worker.heartbeat import CancelledIds
from worker.job import Job, Outcome
from worker.progress import ProgressCoalescer
from worker.registry import Registry
from workerflow.failure import Failure

NS = "wfunit"
REPLY_TO = names.reply_queue(NS, "client")


@dataclass
class FakeDelivery:
    message: Any = None
    error: InvalidMessage | None = None
    acked: bool = False

    def ack(self) -> None:
        self.acked = True


class FakePool:
    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self.jobs: list[Job] = []

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.jobs)


class FakeReplier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []

    def running(self, job: Job) -> None:
        self.sent.append(("running", job.request_id, None))

    def progress(self, job: Job, fraction: float, details: dict[str, Any]) -> None:
        self.sent.append(("progress", job.request_id, fraction))

    def success(self, job: Job, result: Any) -> None:
        self.sent.append(("success", job.request_id, result))

    def failure(self, job: Job, failure: dict[str, Any]) -> None:
        self.sent.append(("failure", job.request_id, failure))

    def reject(self, request_id: str, attempt: int, reply_to: str, failure: dict[str, Any]) -> None:
        assert reply_to == REPLY_TO
        self.sent.append(("reject", request_id, failure))


def request(task: str = "Add", **fields: Any) -> Request:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex, "attempt": 1, "task_type": f"tests.remote_tasks:{task}",
        "task_name": task.lower(), "action": "execute", "arguments": {"a": 1, "b": 2},
        "reply_to": REPLY_TO, "deadline": time.time() + 30, "execution_timeout": None,
    }  # fmt: skip
    values.update(fields)
    return Request(**values)


@pytest.fixture
def parts():
    pool, replier, cancelled = FakePool(), FakeReplier(), CancelledIds()
    freed = threading.Event()
    dispatcher = Dispatcher(
        Registry.from_modules(["tests.remote_tasks"]), "w1", NS, cancelled, freed.set
    )
    coalescer = ProgressCoalescer(replier.progress, interval=0.05)
    coalescer.start()
    pool.submit = pool.jobs.append  # type: ignore[attr-defined]
    dispatcher.attach(pool, replier, coalescer)  # type: ignore[arg-type]
    yield dispatcher, pool, replier, cancelled
    coalescer.close()


def rejected_type(replier: FakeReplier, index: int = -1) -> str:
    kind, _, failure = replier.sent[index]
    assert kind == "reject"
    return str(failure["exception_type_names"][0])


def test_good_request_becomes_a_job_and_its_outcome_a_reply(parts) -> None:
    dispatcher, pool, replier, _ = parts
    delivery = FakeDelivery(request())
    dispatcher.on_delivery(delivery)
    assert delivery.acked and len(pool.jobs) == 1
    job = pool.jobs[0]
    assert dispatcher.running == [job.request_id]
    dispatcher.job_started(job)
    dispatcher.job_progress(job, 0.5, {})
    dispatcher.job_progress(job, 0.7, {})  # within the interval: pending
    dispatcher.job_done(job, Outcome("success", result=3))
    dispatcher.job_done(job, Outcome("success", result=3))  # a duplicate is discarded
    assert replier.sent == [
        ("running", job.request_id, None),
        ("progress", job.request_id, 0.5),
        ("progress", job.request_id, 0.7),
        ("success", job.request_id, 3),
    ]
    assert dispatcher.running == []


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"task_type": "tests.remote_tasks:Nope"}, "unknown task type"),
        ({"task_type": "os:system"}, "unknown task type"),
        ({"execution_timeout": -1.0}, "execution_timeout must be positive"),
        ({"action": "revert", "failure": {"version": 9}}, "bad failure record"),
        ({"action": "revert", "flow_failures": {"x": {}}}, "bad failure record"),
    ],
)
def test_invalid_requests_are_rejected(parts, fields: dict[str, Any], reason: str) -> None:
    dispatcher, pool, replier, _ = parts
    dispatcher.on_delivery(FakeDelivery(request(**fields)))
    assert pool.jobs == []
    assert rejected_type(replier) == "workerflow.errors.MessageRejected"
    assert reason in replier.sent[-1][2]["message"]
    Failure.from_dict(replier.sent[-1][2])  # a well-formed Failure dict


def test_reply_to_outside_the_namespace_is_not_used(parts) -> None:
    dispatcher, pool, replier, _ = parts
    dispatcher.on_delivery(FakeDelivery(request(reply_to="other.replies.x")))
    assert pool.jobs == [] and replier.sent == []


def test_invalid_message_is_answered_only_with_an_address(parts) -> None:
    dispatcher, _, replier, _ = parts
    dispatcher.on_delivery(FakeDelivery(error=InvalidMessage("bad signature")))
    assert replier.sent == []
    error = InvalidMessage("bad signature", request_id="r1", reply_to=REPLY_TO)
    dispatcher.on_delivery(FakeDelivery(error=error))
    assert rejected_type(replier) == "workerflow.errors.MessageRejected"
    assert replier.sent[-1][1] == "r1" and replier.sent[-1][2]["message"] == "bad signature"


def test_other_message_kinds_are_ignored(parts) -> None:
    dispatcher, pool, replier, _ = parts
    beat = Heartbeat("w", "h", 1, [], [], 1, 1, 1.0, [], "0")
    dispatcher.on_delivery(FakeDelivery(beat))
    assert pool.jobs == [] and replier.sent == []


def test_expired_cancelled_and_duplicate_requests_do_not_run(parts) -> None:
    dispatcher, pool, replier, cancelled = parts
    dispatcher.on_delivery(FakeDelivery(request(deadline=time.time() - 1)))
    assert rejected_type(replier) == "workerflow.errors.RequestTimeout"
    cancelled_request = request()
    cancelled.add(cancelled_request.id)
    dispatcher.on_delivery(FakeDelivery(cancelled_request))
    assert pool.jobs == [] and len(replier.sent) == 1
    pool.slots = 2
    twice = request()
    dispatcher.on_delivery(FakeDelivery(twice))
    dispatcher.on_delivery(FakeDelivery(twice))
    assert len(pool.jobs) == 1


def test_a_request_delivered_without_a_free_slot_is_held(parts) -> None:
    dispatcher, pool, _, _ = parts
    first, second = request(), request()
    dispatcher.on_delivery(FakeDelivery(first))
    dispatcher.on_delivery(FakeDelivery(second))
    assert [j.request_id for j in pool.jobs] == [first.id]
    assert dispatcher.holding and dispatcher.free_slots == 0
    pool.jobs.clear()
    dispatcher.start_held()
    assert [j.request_id for j in pool.jobs] == [second.id] and not dispatcher.holding


def test_fail_unfinished_answers_running_and_held_with_worker_lost(parts) -> None:
    dispatcher, pool, replier, _ = parts
    dispatcher.on_delivery(FakeDelivery(request()))
    dispatcher.on_delivery(FakeDelivery(request()))
    assert dispatcher.fail_unfinished("worker shutting down") == 2
    kinds = sorted(kind for kind, _, _ in replier.sent)
    assert kinds == ["failure", "reject"]
    for _, _, failure in replier.sent:
        assert failure["exception_type_names"][0] == "workerflow.errors.WorkerLost"
        assert "worker shutting down" in failure["message"]
    dispatcher.job_done(pool.jobs[0], Outcome("success", result=1))  # late: discarded
    assert len(replier.sent) == 2


def test_progress_coalescer_rate_limits_and_flushes_the_latest() -> None:
    sent: list[tuple[str, float]] = []
    coalescer = ProgressCoalescer(lambda job, f, d: sent.append((job.request_id, f)), 0.05)
    coalescer.start()
    try:
        job = Job("r", 1, "m:T", "t", "execute", {}, REPLY_TO)
        coalescer.update(job, 0.1, {})  # untracked: ignored
        assert sent == []
        coalescer.begin(job)
        for i in range(1, 10_001):
            coalescer.update(job, i / 10_000, {})
        wait_until(lambda: sent and sent[-1][1] == 1.0, 2, what="the pending value flushed")
        assert 2 <= len(sent) <= 10
        values = [f for _, f in sent]
        assert values == sorted(values)
        coalescer.update(job, 1.0, {})
        coalescer.finish(job)
        count = len(sent)
        coalescer.update(job, 1.0, {})
        time.sleep(0.1)  # nothing may arrive after finish(); a short negative check
        assert len(sent) == count
    finally:
        coalescer.close()


def test_cancelled_ids_expire() -> None:
    ids = CancelledIds(ttl=0.05, limit=3)
    ids.add("a")
    assert "a" in ids and "b" not in ids
    wait_until(lambda: "a" not in ids, 2, what="expiry")
    for name in "bcde":
        ids.add(name)
    assert len(ids) == 3 and "b" not in ids and "e" in ids
