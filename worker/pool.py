"""Execution pools: where a worker's jobs run, one job per slot.

Two kinds share one interface (:class:`Pool`): :class:`ThreadPool` (the default; cheap, shares the
worker's memory) and :class:`~worker.process_pool.ProcessPool` (one child process per slot; a job
past its execution timeout is killed with its child and the slot gets a new child).

A pool reports to a :class:`PoolListener`: progress, the job's :class:`~worker.job.Outcome`, and
when a slot becomes free again. The worker only submits when :attr:`Pool.free_slots` is positive.

**Execution timeouts in the thread pool.** A Python thread cannot be killed. When a job passes its
``execution_timeout`` the pool reports an ``ExecutionTimeout`` failure at once and the job's late
result is discarded, but its thread keeps running the task code, and **the slot stays occupied
until the task code returns**: the worker advertises one slot fewer and never over-commits. A task
that never returns holds its slot forever; run tasks that may hang on the process pool, whose
timeouts kill the child.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from typing import Any, Protocol

from worker.job import Job, Outcome, fault, run_job
from worker.registry import Registry
from workerflow.errors import ExecutionTimeout

__all__ = ["Pool", "PoolListener", "ThreadPool", "timeout_outcome"]

log = logging.getLogger(__name__)


class PoolListener(Protocol):
    """What a pool tells its worker, from pool threads (implementations must be thread-safe)."""

    def job_started(self, job: Job) -> None:
        """A slot is about to run ``job``."""

    def job_progress(self, job: Job, fraction: float, details: dict[str, Any]) -> None:
        """The job's task called ``update_progress``."""

    def job_done(self, job: Job, outcome: Outcome) -> None:
        """The job ended (success, failure, timeout or a lost child); called once per job."""

    def slot_freed(self) -> None:
        """A slot can take a job again."""


class Pool(Protocol):
    """A fixed number of slots that run jobs."""

    @property
    def concurrency(self) -> int:
        """Number of slots."""

    @property
    def free_slots(self) -> int:
        """Slots that can take a job now."""

    def start(self) -> None:
        """Start the slots; raises if they cannot start (e.g. a child cannot import the modules)."""

    def submit(self, job: Job) -> None:
        """Run ``job`` in a free slot (the caller checked :attr:`free_slots`)."""

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every running job to end; True if they all did."""

    def close(self, *, kill: bool = False) -> None:
        """Stop the slots; ``kill`` stops running jobs where that is possible (child processes)."""


def timeout_outcome(job: Job) -> Outcome:
    """The failure of a job that ran past its execution timeout."""
    message = (
        f"task {job.task_name!r} ({job.action}, request {job.request_id}) ran past its "
        f"execution timeout of {job.execution_timeout} s"
    )
    return Outcome("failure", failure=fault(ExecutionTimeout, message))


class ThreadPool:
    """Slots as daemon threads in the worker process; see the module docstring on timeouts."""

    def __init__(self, registry: Registry, concurrency: int, listener: PoolListener) -> None:
        self._registry = registry
        self._concurrency = concurrency
        self._listener = listener
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # slots holding a job, including threads still running a timed-out job
        self._running: set[str] = set()  # request ids whose task code has not returned yet
        self._timed_out: set[str] = set()  # running ids already reported as ExecutionTimeout
        self._deadlines: list[tuple[float, str, Job]] = []
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._threads: list[threading.Thread] = []

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def free_slots(self) -> int:
        with self._lock:
            return self._concurrency - self._busy

    def start(self) -> None:
        for i in range(self._concurrency):
            thread = threading.Thread(target=self._slot, name=f"worker-slot-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        watchdog = threading.Thread(target=self._watchdog, name="worker-timeouts", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is closed")
            if self._busy >= self._concurrency:
                raise RuntimeError("no free slot (the worker must check free_slots first)")
            self._busy += 1
            self._running.add(job.request_id)
            if job.execution_timeout is not None:
                deadline = job.started_at + job.execution_timeout
                heapq.heappush(self._deadlines, (deadline, job.request_id, job))
                self._wake.notify()
        self._jobs.put(job)

    def join(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy, timeout)

    def close(self, *, kill: bool = False) -> None:
        # Threads cannot be killed: ``kill`` changes nothing here. Idle slots exit; busy ones exit
        # after their job (they are daemon threads, so they never keep the process alive).
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        for _ in range(self._concurrency):
            self._jobs.put(None)

    def _slot(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._listener.job_started(job)
            outcome = run_job(self._registry, job, self._progress_sink(job))
            with self._lock:
                self._running.discard(job.request_id)
                timed_out = job.request_id in self._timed_out
                self._timed_out.discard(job.request_id)
            if timed_out:
                log.warning(
                    "request %s: task returned %.1f s past its execution timeout; result discarded",
                    job.label,
                    time.monotonic() - job.started_at - (job.execution_timeout or 0.0),
                )
            else:
                self._report(job, outcome)
            with self._lock:
                self._busy -= 1
                self._idle.notify_all()
            self._listener.slot_freed()

    def _progress_sink(self, job: Job) -> Any:
        def sink(fraction: float, details: dict[str, Any]) -> None:
            with self._lock:
                if job.request_id in self._timed_out:
                    return  # timed out: nobody wants its progress any more
            self._listener.job_progress(job, fraction, details)

        return sink

    def _report(self, job: Job, outcome: Outcome) -> None:
        try:
            self._listener.job_done(job, outcome)
        except Exception:
            log.exception("request %s: reporting the outcome failed", job.label)

    def _watchdog(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._deadlines:
                    self._wake.wait()
                    continue
                deadline, request_id, job = self._deadlines[0]
                now = time.monotonic()
                if now < deadline:
                    self._wake.wait(deadline - now)
                    continue
                heapq.heappop(self._deadlines)
                if request_id not in self._running or request_id in self._timed_out:
                    continue  # it finished in time
                self._timed_out.add(request_id)
                self._lock.release()
                try:
                    log.warning(
                        "request %s: execution timeout of %s s passed; the thread cannot be "
                        "killed and keeps its slot until the task code returns",
                        job.label,
                        job.execution_timeout,
                    )
                    self._report(job, timeout_outcome(job))
                finally:
                    self._lock.acquire()
