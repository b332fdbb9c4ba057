"""ProcessPool: one child process per slot, so a job past its execution timeout can be killed.

Children are started with the ``spawn`` method (never ``fork``: the worker has live broker
connections and threads) and import the task modules themselves, by name. Parent and child talk
msgpack over a pipe; nothing is pickled. Each slot has a thread in the worker that hands its child
one job at a time, forwards progress, and enforces the job's execution timeout: past it the child
is killed with SIGKILL, the job fails with ``ExecutionTimeout``, and a new child is started before
the slot takes another job. A child that dies by itself fails its job with ``WorkerLost`` and is
replaced the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgpack

from worker.errors import WorkerError
from worker.job import Job, Outcome, fault, run_job
from worker.pool import PoolListener, timeout_outcome
from worker.registry import Registry
from workerflow.errors import SerializationError, WorkerLost

__all__ = ["ProcessPool"]

log = logging.getLogger(__name__)

CHILD_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [child %(process)d] %(message)s"


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the worker dies (best effort, elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def child_main(conn: Connection, module_names: list[str], log_level: int | None) -> None:
    """A slot's child process: import the task modules, then run jobs until told to stop."""
    # The worker decides when children stop: a terminal's Ctrl-C or a supervisor's SIGTERM sent to
    # the whole process group must not kill a job the worker is letting finish in its grace period.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if log_level is not None:
        logging.basicConfig(level=log_level, format=CHILD_LOG_FORMAT)
    try:
        registry = Registry.from_modules(module_names)
    except BaseException as exc:
        conn.send_bytes(_pack(["error", str(exc)]))
        return
    conn.send_bytes(_pack(["ready", os.getpid()]))
    while True:
        try:
            data = _unpack(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if data is None:
            return
        job = Job.from_wire(data)
        outcome = run_job(registry, job, _child_progress(conn, job))
        conn.send_bytes(_encode_outcome(job, outcome))


def _child_progress(conn: Connection, job: Job) -> Any:
    def sink(fraction: float, details: dict[str, Any]) -> None:
        try:
            message = _pack(["progress", fraction, details])
        except (TypeError, ValueError, OverflowError) as exc:
            logging.getLogger(__name__).warning(
                "request %s: progress details dropped, not msgpack-safe: %s", job.label, exc
            )
            message = _pack(["progress", fraction, {}])
        conn.send_bytes(message)

    return sink


def _encode_outcome(job: Job, outcome: Outcome) -> bytes:
    if outcome.state == "failure":
        return _pack(["failure", outcome.failure])
    try:
        return _pack(["success", outcome.result])
    except (TypeError, ValueError, OverflowError) as exc:
        message = (
            f"the result of task {job.task_name!r} ({job.task_type}) is not msgpack-safe: "
            f"{type(exc).__name__}: {exc}"
        )
        return _pack(["failure", fault(SerializationError, message)])


class _Slot:
    """One child process and the parent-side thread that feeds it."""

    def __init__(self, pool: ProcessPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.busy = False
        self.thread = threading.Thread(
            target=self._serve, name=f"worker-process-slot-{index}", daemon=True
        )

    # -- child lifecycle -------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start a child; :meth:`await_ready` waits for it to finish importing the task modules."""
        parent_conn, child_conn = self.pool.context.Pipe(duplex=True)
        process = self.pool.context.Process(
            target=child_main,
            args=(child_conn, self.pool.module_names, self.pool.log_level),
            name=f"workerflow-slot-{self.index}",
        )
        process.start()
        child_conn.close()  # so the parent sees EOF when the child dies
        self.process, self.conn = process, parent_conn

    def await_ready(self, timeout: float) -> None:
        assert self.conn is not None and self.process is not None
        if not self.conn.poll(timeout):
            self.kill()
            raise WorkerError(f"process pool child {self.index} did not start within {timeout} s")
        try:
            message = _unpack(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            code = self.kill()
            raise WorkerError(f"process pool child exited with code {code} at start") from exc
        if message[0] != "ready":
            self.kill()
            raise WorkerError(f"process pool child cannot start: {message[1]}")
        log.debug("slot %d: child %s ready", self.index, message[1])

    def kill(self) -> int | None:
        """SIGKILL the child and reap it; returns its exit code."""
        if self.process is None:
            return None
        process, conn = self.process, self.conn
        self.process = self.conn = None
        if process.is_alive():
            process.kill()
        process.join(5)
        if conn is not None:
            conn.close()
        return process.exitcode

    def stop(self, timeout: float) -> None:
        """Ask the child to exit after its current job; kill it if not gone within ``timeout``."""
        if self.process is None or self.conn is None:
            return
        with contextlib.suppress(OSError):
            self.conn.send_bytes(_pack(None))
        self.process.join(timeout)
        self.kill()

    def replace(self) -> None:
        self.kill()
        if self.pool.closed:
            return
        try:
            self.spawn()
            self.await_ready(self.pool.start_timeout)
            log.info("slot %d: replaced its child process (pid %s)", self.index, self.pid)
        except Exception:
            log.exception("slot %d: cannot start a new child; the next job retries", self.index)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    # -- running jobs ----------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                self.stop(self.pool.stop_timeout)
                return
            outcome, replace = self._run(job)
            self.pool.report(job, outcome)
            if replace:
                self.replace()
            self.pool.release(self)

    def _run(self, job: Job) -> tuple[Outcome, bool]:
        """Run ``job`` in the child; returns its outcome and whether the child must be replaced."""
        if self.process is None or not self.process.is_alive():
            self.replace()
        conn, process = self.conn, self.process
        if conn is None or process is None:
            return Outcome("failure", failure=fault(WorkerLost, "no child process to run on")), True
        self.pool.listener.job_started(job)
        try:
            conn.send_bytes(_pack(job.to_wire()))
        except OSError as exc:
            return self._lost(job, f"cannot hand the job to child {process.pid}: {exc}"), True
        deadline = None
        if job.execution_timeout is not None:
            deadline = job.started_at + job.execution_timeout
        while True:
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            try:
                ready = conn.poll(wait)
                message = _unpack(conn.recv_bytes()) if ready else None
            except (EOFError, OSError):
                process.join(1)
                return self._lost(job, f"exit code {process.exitcode}"), True
            if message is not None:
                kind = message[0]
                if kind == "progress":
                    self.pool.listener.job_progress(job, float(message[1]), message[2])
                    continue
                if kind == "success":
                    return Outcome("success", result=message[1]), False
                return Outcome("failure", failure=message[1]), False
            if deadline is not None and time.monotonic() >= deadline:
                log.warning(
                    "request %s: execution timeout of %s s passed; killing child %s",
                    job.label,
                    job.execution_timeout,
                    process.pid,
                )
                return timeout_outcome(job), True

    def _lost(self, job: Job, detail: str) -> Outcome:
        log.error("request %s: the child process running it died (%s)", job.label, detail)
        message = f"the process running task {job.task_name!r} died ({detail})"
        return Outcome("failure", failure=fault(WorkerLost, message))


class ProcessPool:
    """Slots as child processes; the module docstring explains timeouts and replacement."""

    def __init__(
        self,
        module_names: list[str],
        concurrency: int,
        listener: PoolListener,
        *,
        start_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        log_level: int | None = None,
    ) -> None:
        self.module_names = module_names
        self.listener = listener
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self.context = multiprocessing.get_context("spawn")
        self.closed = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._slots = [_Slot(self, i) for i in range(concurrency)]

    @property
    def concurrency(self) -> int:
        return len(self._slots)

    @property
    def free_slots(self) -> int:
        with self._lock:
            return sum(1 for slot in self._slots if not slot.busy)

    @property
    def child_pids(self) -> list[int]:
        """Pids of the live children (for logs and tests)."""
        return [slot.pid for slot in self._slots if slot.pid is not None]

    def start(self) -> None:
        try:
            for slot in self._slots:
                slot.spawn()
            for slot in self._slots:
                slot.await_ready(self.start_timeout)
        except BaseException:
            for slot in self._slots:
                slot.kill()
            raise
        for slot in self._slots:
            slot.thread.start()
        log.debug("process pool started: children %s", self.child_pids)

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.closed:
                raise RuntimeError("the pool is closed")
            slot = next((s for s in self._slots if not s.busy), None)
            if slot is None:
                raise RuntimeError("no free slot (the worker must check free_slots first)")
            slot.busy = True
        slot.jobs.put(job)

    def report(self, job: Job, outcome: Outcome) -> None:
        try:
            self.listener.job_done(job, outcome)
        except Exception:
            log.exception("request %s: reporting the outcome failed", job.label)

    def release(self, slot: _Slot) -> None:
        with self._lock:
            slot.busy = False
            self._idle.notify_all()
        self.listener.slot_freed()

    def join(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not any(slot.busy for slot in self._slots), timeout)

    def close(self, *, kill: bool = False) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if kill:
            for slot in self._slots:
                slot.kill()  # a busy slot's thread sees EOF and reports WorkerLost
        for slot in self._slots:
            slot.jobs.put(None)
        for slot in self._slots:
            if slot.thread.is_alive():
                slot.thread.join(self.stop_timeout + 1)
            slot.kill()
