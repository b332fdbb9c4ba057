"""Every remote fault becomes a named failure within its bound, against real worker subprocesses.

Timeouts are kept short (discovery 1 s, heartbeat 2 s, request 1 s) so each fault shows in seconds;
each test measures how long the fault took to surface and checks it against its bound plus a small
slack (the executor's timer ticks every 0.1 s; workers heartbeat every 1 s).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.remote_tasks import RecordRevert, Sleep, SlowPid, Spin
from tests.support import running_workers, wait_until
from workerflow import Engine, LinearFlow, Task, UnorderedFlow
from workerflow.errors import (
    ExecutionTimeout,
    NoWorkerAvailable,
    RequestTimeout,
    WorkerLost,
)
from workerflow.executors import WorkerExecutor
from workerflow.failure import Failure
from workerflow.retry import RetryPolicy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

#: Allowed lateness beyond a timeout: timer tick, message latency, a loaded 2-core machine.
SLACK = 0.75


class Unregistered(Task):
    """Defined only here, so no worker registers it."""

    def execute(self) -> None:
        pass


class Events:
    """Collects atom_notifier events with the time each arrived."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        with self.lock:
            self.items.append((time.monotonic(), event, dict(details)))

    def first(self, event: str, task: str) -> tuple[float, dict[str, Any]] | None:
        with self.lock:
            for when, name, details in self.items:
                if name == event and details.get("task") == task:
                    return when, details
        return None


def failure_of(future: Any, timeout: float = 30.0) -> Failure:
    value = future.result(timeout=timeout)
    assert isinstance(value, Failure), f"expected a Failure, got {value!r}"
    return value


def request_id_in(failure: Failure) -> str:
    found = re.search(r"request ([0-9a-f]{32})", failure.message)
    assert found, failure.message
    return found.group(1)


# -- NoWorkerAvailable ---------------------------------------------------------------------------


def test_no_worker_at_all_is_no_worker_available_within_discovery_timeout(
    broker_url: str, namespace: str
) -> None:
    with WorkerExecutor(broker_url, namespace=namespace, discovery_timeout=1.0) as executor:
        engine = Engine(LinearFlow("f").add(Sleep()), store={"seconds": 0}, executor=executor)
        started = time.monotonic()
        with pytest.raises(NoWorkerAvailable, match=r"discovery_timeout=1\.0") as caught:
            engine.run()
        elapsed = time.monotonic() - started
    print(f"NoWorkerAvailable (no worker) after {elapsed:.2f} s (bound 1.0 s)")
    assert "'Sleep'" in str(caught.value)
    assert 1.0 <= elapsed <= 1.0 + SLACK, elapsed


def test_a_task_no_worker_registers_is_no_worker_available(broker_url: str, namespace: str) -> None:
    with (
        running_workers(broker_url, namespace, 1) as _,
        WorkerExecutor(broker_url, namespace=namespace, discovery_timeout=1.0) as executor,
    ):
        started = time.monotonic()
        failure = failure_of(executor.execute(Unregistered(), {}))
        elapsed = time.monotonic() - started
        print(f"NoWorkerAvailable (unregistered task) after {elapsed:.2f} s (bound 1.0 s)")
        assert failure.check(NoWorkerAvailable)
        assert Unregistered().task_type in failure.message
        assert 1.0 <= elapsed <= 1.0 + SLACK, elapsed
        # A task on a queue no worker consumes is the same fault.
        failure = failure_of(executor.execute(Sleep(queue="nobody"), {"seconds": 0}))
        assert failure.check(NoWorkerAvailable) and "'nobody'" in failure.message


# -- RequestTimeout ------------------------------------------------------------------------------


def test_a_request_nobody_starts_is_request_timeout_and_never_runs_later(
    broker_url: str, namespace: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    with (
        running_workers(broker_url, namespace, 1, args=["--concurrency", "1"]) as [worker],
        WorkerExecutor(
            broker_url, namespace=namespace, discovery_timeout=2.0, request_timeout=1.0
        ) as executor,
    ):
        busy = executor.execute(Sleep(), {"seconds": 3.0, "steps": 3})
        wait_until(lambda: worker.saw("Sleep: execute"), 5, what="the Sleep task to start")
        started = time.monotonic()
        late = executor.execute(RecordRevert(name="late"), {"journal": str(journal)})
        failure = failure_of(late)
        elapsed = time.monotonic() - started
        print(f"RequestTimeout after {elapsed:.2f} s (bound 1.0 s)")
        assert failure.check(RequestTimeout)
        assert "request_timeout=1.0" in failure.message and "'late'" in failure.message
        assert 1.0 <= elapsed <= 1.0 + SLACK, elapsed
        assert busy.result(timeout=10) == 3.0
        # The worker is free again: it must take the stale request and drop it, not run it.
        request_id = request_id_in(failure)
        wait_until(
            lambda: worker.saw(f"request {request_id}") and worker.saw("dropped"),
            10,
            what="the worker to drop the timed-out request",
        )
        assert not journal.exists(), journal.read_text()
        # ... and the next good request still runs.
        assert executor.execute(Sleep(), {"seconds": 0.0}).result(timeout=10) == 0.0


# -- ExecutionTimeout ----------------------------------------------------------------------------


def test_a_task_running_past_its_execution_timeout_is_execution_timeout(
    broker_url: str, namespace: str
) -> None:
    events = Events()
    flow = LinearFlow("slow").add(Sleep(execution_timeout=0.5))
    with (
        running_workers(broker_url, namespace, 1) as _,
        WorkerExecutor(broker_url, namespace=namespace, heartbeat_timeout=2.0) as executor,
    ):
        engine = Engine(flow, store={"seconds": 5.0, "steps": 50}, executor=executor)
        engine.atom_notifier.register(events)
        with pytest.raises(ExecutionTimeout):
            engine.run()
    running = events.first("RUNNING", "Sleep")
    failed = events.first("FAILURE", "Sleep")
    assert running is not None and failed is not None
    elapsed = failed[0] - running[0]
    print(f"ExecutionTimeout {elapsed:.2f} s after RUNNING (bound 0.5 s)")
    assert 0.5 <= elapsed <= 0.5 + SLACK, elapsed


# -- WorkerLost ----------------------------------------------------------------------------------


def kill_the_worker_running(
    events: Events, task: str, workers: list[Any], timeout: float = 15.0
) -> tuple[float, int]:
    """Wait for ``task`` to report its pid, SIGKILL that worker; (when, pid)."""
    found = wait_until(lambda: events.first("PROGRESS", task), timeout, what=f"{task} to start")
    assert found is not None
    pid = found[1]["pid"]
    [victim] = [w for w in workers if w.pid == pid]
    victim.signal(signal.SIGKILL)
    return time.monotonic(), pid


def test_sigkill_of_the_running_worker_is_worker_lost_within_heartbeat_timeout(
    broker_url: str, namespace: str
) -> None:
    events = Events()
    flow = LinearFlow("victim").add(SlowPid())
    with (
        running_workers(broker_url, namespace, 1) as workers,
        WorkerExecutor(broker_url, namespace=namespace, heartbeat_timeout=2.0) as executor,
    ):
        engine = Engine(flow, store={"seconds": 30.0}, executor=executor)
        engine.atom_notifier.register(events)
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                engine.run()
            except BaseException as exc:
                outcome.append(exc)

        runner = threading.Thread(target=run)
        runner.start()
        killed_at, _ = kill_the_worker_running(events, "SlowPid", workers)
        runner.join(20)
        assert not runner.is_alive()
    failed = events.first("FAILURE", "SlowPid")
    assert failed is not None
    assert isinstance(outcome[0], WorkerLost), outcome
    assert "heartbeat_timeout=2.0" in str(outcome[0])
    elapsed = failed[0] - killed_at
    print(f"WorkerLost {elapsed:.2f} s after SIGKILL (bound 2.0 s)")
    assert elapsed <= 2.0 + SLACK, elapsed


def test_with_a_retry_policy_the_flow_completes_on_the_other_worker(
    broker_url: str, namespace: str
) -> None:
    events = Events()
    retry = RetryPolicy(retry_on=("workerflow.errors.WorkerLost",))
    flow = LinearFlow("survivor").add(SlowPid(retry_policy=retry))
    with (
        running_workers(broker_url, namespace, 2) as workers,
        WorkerExecutor(broker_url, namespace=namespace, heartbeat_timeout=2.0) as executor,
    ):
        engine = Engine(flow, store={"seconds": 1.5}, executor=executor)
        engine.atom_notifier.register(events)
        runner = threading.Thread(target=engine.run)
        runner.start()
        killed_at, killed_pid = kill_the_worker_running(events, "SlowPid", workers)
        runner.join(30)
        assert not runner.is_alive()
        retrying = events.first("RETRYING", "SlowPid")
        assert retrying is not None, events.items
        print(f"WorkerLost -> RETRYING {retrying[0] - killed_at:.2f} s after SIGKILL")
        assert retrying[0] - killed_at <= 2.0 + SLACK
        assert engine.state == "SUCCESS"
        survivor = ({w.pid for w in workers} - {killed_pid}).pop()
        assert engine.storage.fetch("pid") == survivor


def test_a_busy_but_healthy_worker_is_never_declared_lost(broker_url: str, namespace: str) -> None:
    # Three heartbeat timeouts of work, one task sleeping and one burning CPU, side by side.
    flow = UnorderedFlow("busy").add(SlowPid(), Spin())
    with (
        running_workers(broker_url, namespace, 1, args=["--concurrency", "2"]) as [worker],
        WorkerExecutor(broker_url, namespace=namespace, heartbeat_timeout=1.5) as executor,
    ):
        engine = Engine(flow, store={"seconds": 4.5}, executor=executor)
        engine.run()
        assert engine.storage.fetch("pid") == worker.pid
        assert engine.storage.fetch("spins") > 0
