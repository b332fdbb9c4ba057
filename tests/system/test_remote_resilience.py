"""The worker-based executor under broker restarts, many client runs, and suspend/resume."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.remote_tasks import Add, RecordRevert, Sleep, SlowPid
from tests.support import RedisServer, WorkerProcess, running_workers, wait_until
from workerflow import Engine, Failure, LinearFlow
from workerflow.errors import ExecutorError, WorkerflowError
from workerflow.executors import WorkerExecutor

pytestmark = [pytest.mark.slow]


class Events:
    """atom_notifier events, in arrival order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        with self.lock:
            self.items.append((event, dict(details)))

    def saw(self, event: str, task: str) -> bool:
        with self.lock:
            return any(e == event and d.get("task") == task for e, d in self.items)


def namespace_keys(url: str, namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return sorted(client.scan_iter(match=f"*{namespace}*", count=1000))
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_redis_restarted_mid_flow_completes_or_fails_with_a_named_error(
    private_redis: RedisServer, namespace: str
) -> None:
    url = private_redis.url
    flow = LinearFlow("through-a-restart").add(
        *(SlowPid(name=f"s{i}", provides=f"pid{i}", inject={"seconds": 0.5}) for i in range(4))
    )
    events = Events()
    outcome: list[BaseException | None] = []
    bound = 60.0
    with (
        running_workers(url, namespace, 1) as _,
        WorkerExecutor(
            url, namespace=namespace, request_timeout=5.0, heartbeat_timeout=3.0
        ) as executor,
    ):
        engine = Engine(flow, executor=executor)
        engine.atom_notifier.register(events)

        def run() -> None:
            try:
                engine.run()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        runner = threading.Thread(target=run)
        runner.start()
        wait_until(lambda: events.saw("RUNNING", "s1"), 15, what="the second task to start")
        private_redis.restart()
        restarted = time.monotonic()
        runner.join(bound)
        took = time.monotonic() - restarted
        assert not runner.is_alive(), f"the flow hung for {bound} s after the restart"
    print(f"after the Redis restart the flow ended in {took:.1f} s: {outcome[0]!r}")
    if outcome[0] is None:
        assert engine.state == "SUCCESS"
        assert len({engine.storage.fetch(f"pid{i}") for i in range(4)}) == 1
    else:
        assert isinstance(outcome[0], WorkerflowError), repr(outcome[0])


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_a_thousand_client_runs_leave_no_keys_behind(redis_url: str, namespace: str) -> None:
    runs = 1000
    worker = WorkerProcess(redis_url, namespace).wait_ready()
    try:
        # The running worker's own control binding is there before and after; nothing else.
        before = namespace_keys(redis_url, namespace)
        started = time.monotonic()
        for i in range(runs):
            with WorkerExecutor(redis_url, namespace=namespace, discovery_timeout=5.0) as ex:
                engine = Engine(LinearFlow("f").add(Add()), store={"a": i, "b": 1}, executor=ex)
                engine.run()
                assert engine.storage.fetch("sum") == i + 1
        took = time.monotonic() - started
        print(f"{runs} executor open/run/close cycles in {took:.1f} s")
        assert namespace_keys(redis_url, namespace) == before
        worker.signal(signal.SIGTERM)
        assert worker.wait_exit(30) == 0
    finally:
        worker.stop()
    assert namespace_keys(redis_url, namespace) == []


@pytest.mark.timeout(60)
def test_suspend_with_remote_tasks_in_flight_then_resume_without_rerunning(
    broker_url: str, namespace: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    flow = LinearFlow("resumable").add(
        RecordRevert(name="first"),
        SlowPid(name="slow", inject={"seconds": 1.0}),
        RecordRevert(name="last"),
    )
    with (
        running_workers(broker_url, namespace, 1) as _,
        WorkerExecutor(broker_url, namespace=namespace) as executor,
    ):
        engine = Engine(flow, store={"journal": str(journal)}, executor=executor)
        first_run = Events()
        engine.atom_notifier.register(first_run)

        def suspend_when_slow_runs(event: str, details: dict[str, Any]) -> None:
            if event == "PROGRESS" and details.get("task") == "slow":
                engine.suspend()  # "slow" is running on the worker right now

        engine.atom_notifier.register(suspend_when_slow_runs)
        engine.run()
        assert engine.state == "SUSPENDED"
        # The in-flight remote task finished cleanly; nothing after it started.
        assert engine.storage.get_state("slow") == "SUCCESS"
        assert engine.storage.get_state("last") == "PENDING"
        assert journal.read_text().split() == ["execute:first"]

        resumed = Engine(flow, executor=executor, storage=engine.storage)
        second_run = Events()
        resumed.atom_notifier.register(second_run)
        resumed.run()
        assert resumed.state == "SUCCESS"
    assert journal.read_text().split() == ["execute:first", "execute:last"]
    assert not second_run.saw("RUNNING", "first") and not second_run.saw("RUNNING", "slow")
    assert second_run.saw("RUNNING", "last")
    assert resumed.storage.fetch("pid") == engine.storage.fetch("pid")


@pytest.mark.redis
def test_closing_an_executor_mid_request_leaves_no_reply_behind(
    redis_url: str, namespace: str
) -> None:
    started = threading.Event()
    with running_workers(redis_url, namespace, 1) as (worker,):
        executor = WorkerExecutor(redis_url, namespace=namespace, discovery_timeout=5.0)
        executor.start()
        future = executor.execute(
            Sleep(), {"seconds": 0.6, "steps": 3}, progress=lambda f, d: started.set()
        )
        assert started.wait(10), "the task never reported progress"
        executor.stop()
        failure = future.result(timeout=5)
        assert isinstance(failure, Failure) and failure.check(ExecutorError), failure
        # The worker finishes the task, but its reply for the cancelled request is dropped.
        worker.wait_for_line("success reply dropped, the request was cancelled", timeout=10)
        assert namespace_keys(redis_url, namespace) == []
