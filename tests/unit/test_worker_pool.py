"""Execution pools without a broker: thread and process slots, timeouts, crashes, progress."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pytest

from tests.support import wait_until
from worker.errors import WorkerError
from worker.job import Job, Outcome
from worker.pool import Pool, ThreadPool
from worker.process_pool import ProcessPool
from worker.registry import Registry
from workerflow.failure import Failure

MODULE = "tests.remote_tasks"


class Recorder:
    """A PoolListener that keeps every event."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.progress: list[tuple[str, float]] = []
        self.done: dict[str, list[Outcome]] = {}
        self.freed = 0

    def job_started(self, job: Job) -> None:
        with self.lock:
            self.started.append(job.request_id)

    def job_progress(self, job: Job, fraction: float, details: dict[str, Any]) -> None:
        with self.lock:
            self.progress.append((job.request_id, fraction))

    def job_done(self, job: Job, outcome: Outcome) -> None:
        with self.lock:
            self.done.setdefault(job.request_id, []).append(outcome)

    def slot_freed(self) -> None:
        with self.lock:
            self.freed += 1

    def outcome(self, job: Job, timeout: float = 10.0) -> Outcome:
        wait_until(lambda: job.request_id in self.done, timeout, what=f"outcome of {job.label}")
        return self.done[job.request_id][0]


def job(task: str, timeout: float | None = None, action: str = "execute", **kwargs: Any) -> Job:
    options = {k: kwargs.pop(k) for k in ("result", "failure", "flow_failures") if k in kwargs}
    return Job(
        request_id=uuid.uuid4().hex,
        attempt=1,
        task_type=f"{MODULE}:{task}",
        task_name=task.lower(),
        action=action,  # type: ignore[arg-type]
        arguments=kwargs,
        reply_to="unused",
        execution_timeout=timeout,
        **options,
    )


def names(outcome: Outcome) -> list[str]:
    assert outcome.failure is not None, outcome
    return list(outcome.failure["exception_type_names"])


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def thread_pool(recorder: Recorder):
    pool = ThreadPool(Registry.from_modules([MODULE]), 2, recorder)
    pool.start()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def process_env():
    recorder = Recorder()
    pool = ProcessPool([MODULE], 1, recorder, start_timeout=30)
    pool.start()
    yield pool, recorder
    pool.close(kill=True)


def run_common(pool: Pool, recorder: Recorder) -> None:
    ok = job("Add", a=2, b=3)
    pool.submit(ok)
    assert recorder.outcome(ok) == Outcome("success", result=5)
    assert ok.request_id in recorder.started

    bad = job("Fail", message="nope")
    pool.submit(bad)
    outcome = recorder.outcome(bad)
    assert names(outcome)[:2] == ["builtins.ValueError", "builtins.Exception"]
    assert outcome.failure is not None and outcome.failure["message"] == "nope"
    assert "raise ValueError(message)" in outcome.failure["traceback_text"]

    async_job = job("AsyncAdd", a=1, b=1)
    pool.submit(async_job)
    assert recorder.outcome(async_job).result == 2

    slept = job("Sleep", seconds=0.05, steps=5)
    pool.submit(slept)
    assert recorder.outcome(slept).result == 0.05
    values = [f for rid, f in recorder.progress if rid == slept.request_id]
    assert values == sorted(values) and values[-1] == 1.0

    failure = Failure.from_exception(ValueError("x")).to_dict()
    flow = {"other": Failure.from_exception(KeyError("k")).to_dict()}
    revert = job("ReportRevert", action="revert", failure=failure, flow_failures=flow)
    pool.submit(revert)
    assert recorder.outcome(revert).result == {
        "failure": ["builtins.ValueError", "builtins.Exception", "builtins.BaseException"],
        "msg": "x",
        "flow_failures": {"other": "builtins.KeyError"},
    }
    revert_ok = job("ReportRevert", action="revert", result=[1, 2], value=1)
    pool.submit(revert_ok)
    assert recorder.outcome(revert_ok).result == {"result": [1, 2], "flow_failures": {}}

    unknown = job("Missing")
    pool.submit(unknown)
    assert "builtins.KeyError" in names(recorder.outcome(unknown))
    wait_until(lambda: pool.free_slots == pool.concurrency, 5, what="all slots free")


def test_thread_pool_runs_jobs(thread_pool: ThreadPool, recorder: Recorder) -> None:
    run_common(thread_pool, recorder)
    assert thread_pool.join(1)


def test_thread_pool_counts_slots(thread_pool: ThreadPool, recorder: Recorder) -> None:
    jobs = [job("Sleep", seconds=0.3, steps=3) for _ in range(2)]
    for j in jobs:
        thread_pool.submit(j)
    assert thread_pool.free_slots == 0
    with pytest.raises(RuntimeError, match="no free slot"):
        thread_pool.submit(job("Add", a=1, b=2))
    assert not thread_pool.join(0.05)
    assert thread_pool.join(5)
    assert thread_pool.free_slots == 2 and recorder.freed >= 2


def test_thread_pool_timeout_reports_at_deadline_and_keeps_the_slot(
    thread_pool: ThreadPool, recorder: Recorder
) -> None:
    slow = job("Sleep", timeout=0.2, seconds=1.0, steps=10)
    started = time.monotonic()
    thread_pool.submit(slow)
    outcome = recorder.outcome(slow)
    assert time.monotonic() - started < 0.8
    assert names(outcome)[0] == "workerflow.errors.ExecutionTimeout"
    assert "0.2 s" in outcome.failure["message"]  # type: ignore[index]
    assert thread_pool.free_slots == 1  # the thread still runs the task code
    wait_until(lambda: thread_pool.free_slots == 2, 5, what="slot back after the task returned")
    assert len(recorder.done[slow.request_id]) == 1  # the late result was discarded
    fast = job("Add", timeout=5, a=1, b=1)
    thread_pool.submit(fast)
    assert recorder.outcome(fast).result == 2


def test_process_pool_runs_jobs(process_env) -> None:
    pool, recorder = process_env
    run_common(pool, recorder)


def test_process_pool_unserializable_result(process_env) -> None:
    pool, recorder = process_env
    j = job("NotSerializable")
    pool.submit(j)
    outcome = recorder.outcome(j)
    assert names(outcome)[0] == "workerflow.errors.SerializationError"
    assert "not msgpack-safe" in outcome.failure["message"]  # type: ignore[index]


def test_process_pool_timeout_kills_the_child_and_replaces_it(process_env) -> None:
    pool, recorder = process_env
    before = job("Pid")
    pool.submit(before)
    old_pid = recorder.outcome(before).result
    slow = job("Sleep", timeout=0.3, seconds=30, steps=30)
    pool.submit(slow)
    outcome = recorder.outcome(slow)
    assert names(outcome)[0] == "workerflow.errors.ExecutionTimeout"
    wait_until(lambda: pool.free_slots == 1, 30, what="slot replaced")
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    after = job("Pid")
    pool.submit(after)
    new_pid = recorder.outcome(after, 30).result
    assert new_pid != old_pid


def test_process_pool_child_crash_is_worker_lost(process_env) -> None:
    pool, recorder = process_env
    crash = job("ExitProcess", code=7)
    pool.submit(crash)
    outcome = recorder.outcome(crash)
    assert names(outcome)[0] == "workerflow.errors.WorkerLost"
    assert "exit code 7" in outcome.failure["message"]  # type: ignore[index]
    wait_until(lambda: pool.free_slots == 1, 30, what="slot replaced")
    again = job("Add", a=1, b=2)
    pool.submit(again)
    assert recorder.outcome(again, 30).result == 3


def test_process_pool_reports_a_module_that_cannot_import(recorder: Recorder) -> None:
    pool = ProcessPool(["no_such_task_module_xyz"], 1, recorder, start_timeout=30)
    with pytest.raises(WorkerError, match="no_such_task_module_xyz"):
        pool.start()
