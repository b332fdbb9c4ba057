"""Local executors: inline (:class:`SerialExecutor`), threads, and processes.

All of them run task code through :func:`workerflow.task.run_action` and resolve their futures with
the returned value or a :class:`~workerflow.failure.Failure`; their futures never raise.

:class:`ProcessExecutor` sends only names and pickled values to its children: the child rebuilds the
task from its importable ``task_type`` with ``name=`` (as a worker daemon does), runs it, and sends
the outcome and any progress back on one queue, which a thread in the parent drains. A task,
argument or result that cannot be pickled, a task that cannot be imported, and a child that dies all
become clear failures (:class:`~workerflow.errors.SerializationError`,
:class:`~workerflow.errors.WorkerLost`).
"""

from __future__ import annotations

import importlib
import itertools
import logging
import multiprocessing
import os
import pickle
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

from workerflow.errors import ExecutorError, SerializationError, WorkerLost
from workerflow.executors.base import Executor, TaskCall
from workerflow.failure import Failure
from workerflow.reraise import cleanup_then_reraise
from workerflow.task import FunctionTask, ProgressSink, Task, run_action

__all__ = ["ProcessExecutor", "SerialExecutor", "ThreadExecutor", "load_task"]

logger = logging.getLogger(__name__)


def _call(call: TaskCall) -> Any:
    """Run one action; its exception becomes a Failure."""
    try:
        return run_action(
            call.task,
            call.action,
            call.arguments,
            result=call.result,
            flow_failures=call.flow_failures,
            progress=call.progress,
        )
    except Exception as exc:
        return Failure.from_exception(exc)


def _resolved(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


class SerialExecutor(Executor):
    """Runs each action inline, on the engine's thread; the default. Capacity 1."""

    capacity = 1

    def submit(self, call: TaskCall) -> Future[Any]:
        return _resolved(_call(call))


class ThreadExecutor(Executor):
    """Runs actions on a pool of ``max_workers`` threads (default: CPUs + 4, at most 32)."""

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.capacity = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="workerflow")

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def submit(self, call: TaskCall) -> Future[Any]:
        pool = self._pool
        if pool is None:
            raise ExecutorError("ThreadExecutor is not started (use start() or 'with')")
        return pool.submit(_call, call)


# -- processes ----------------------------------------------------------------------------------

# State of a *child* process, set by the pool's initializer: the queue back to the parent. A child
# serves exactly one ProcessExecutor, so this per-process slot is the natural place for it.
_child: dict[str, Any] = {}


def load_task(task_type: str, name: str) -> Task:
    """Build the task ``task_type`` (``module:QualName``) names, with ``name=``.

    A class is instantiated; a module attribute that is already a task (``@task`` functions) is
    cloned under ``name``; a plain function is wrapped in a FunctionTask.
    """
    module_name, sep, qualname = task_type.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"task type {task_type!r} is not 'module:QualName'")
    if "<locals>" in qualname:
        raise ValueError(
            f"task type {task_type!r} is defined inside a function; define it at module level"
        )
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, Task):
        return obj(name=name)
    if isinstance(obj, FunctionTask):
        return obj.clone(name=name)
    if isinstance(obj, Task):
        return obj
    if callable(obj):
        return FunctionTask(obj, name=name)
    raise TypeError(f"{task_type!r} is neither a Task class nor a function")


def _portable(failure: Failure) -> Failure:
    """A Failure without the live exception objects, which may not pickle."""
    return Failure.from_dict(failure.to_dict())


def _failure_dict(exc: BaseException) -> dict[str, Any]:
    return Failure.from_exception(exc).to_dict()


def _child_init(results: Any) -> None:
    _child["queue"] = results


def _child_run(request_id: int, payload: bytes) -> None:
    """Run one action in a child; the outcome goes back on the queue, after any progress."""
    results = _child["queue"]
    outcome: tuple[str, Any]
    try:
        task_type, name, action, arguments, result, flow_failures = pickle.loads(payload)
        task = load_task(task_type, name)
    except Exception as exc:
        error = SerializationError(f"the child process cannot load the task request: {exc}")
        error.__cause__ = exc
        results.put(("done", request_id, ("failure", _failure_dict(error))))
        return

    def progress(fraction: float, details: dict[str, Any]) -> None:
        try:
            pickle.dumps(details)
        except Exception:
            logger.warning("task %r: progress details cannot be pickled; sent without them", name)
            details = {}
        results.put(("progress", request_id, fraction, details))

    value = _call(
        TaskCall(
            task,
            action,
            arguments,
            result=result,
            flow_failures=flow_failures,
            progress=progress,
        )
    )
    if isinstance(value, Failure):
        outcome = ("failure", value.to_dict())
    else:
        try:
            outcome = ("value", pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
        except Exception as exc:
            error = SerializationError(
                f"the result of task {name!r} ({type(value).__name__}) cannot be pickled "
                f"back to the engine: {exc}"
            )
            outcome = ("failure", _failure_dict(error))
    results.put(("done", request_id, outcome))


class ProcessExecutor(Executor):
    """Runs actions in a pool of ``max_workers`` child processes (default: one per CPU).

    Tasks must be importable (defined at module level) and their arguments and results picklable.
    ``update_progress`` in a child reaches the engine. A child that dies fails its action with
    :class:`~workerflow.errors.WorkerLost` (and, as the pool is then broken, every action in flight
    with it); the next action starts a fresh pool.
    """

    def __init__(
        self, max_workers: int | None = None, *, mp_context: str | BaseContext | None = None
    ) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.capacity = max_workers or os.cpu_count() or 1
        self._context = (
            mp_context
            if isinstance(mp_context, BaseContext)
            else multiprocessing.get_context(mp_context)
        )
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._queue: Any = None
        self._reader: threading.Thread | None = None
        self._pending: dict[int, tuple[Future[Any], ProgressSink | None, str]] = {}
        self._ids = itertools.count(1)

    def start(self) -> None:
        with self._lock:
            if self._pool is not None:
                return
            self._queue = self._context.Queue()
            try:
                self._pool = self._new_pool()
                self._reader = threading.Thread(
                    target=self._read, args=(self._queue,), name="workerflow-process-results",
                    daemon=True,
                )  # fmt: skip
                self._reader.start()
            except Exception:
                with cleanup_then_reraise():
                    if self._pool is not None:
                        self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._reader = None
                    self._queue.close()
                    self._queue = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.capacity,
            mp_context=self._context,
            initializer=_child_init,
            initargs=(self._queue,),
        )

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            results, reader = self._queue, self._reader
            self._queue = self._reader = None
        if pool is None:
            return
        pool.shutdown(wait=True, cancel_futures=True)
        results.put(None)
        if reader is not None:
            reader.join()
        results.close()
        results.join_thread()
        with self._lock:
            pending, self._pending = self._pending, {}
        for future, _, name in pending.values():
            error = ExecutorError(f"the process executor stopped before task {name!r} finished")
            future.set_result(Failure.from_exception(error))

    def submit(self, call: TaskCall) -> Future[Any]:
        if self._pool is None:
            raise ExecutorError("ProcessExecutor is not started (use start() or 'with')")
        try:
            payload = self._payload(call)
        except SerializationError as exc:
            return _resolved(Failure.from_exception(exc))
        request_id = next(self._ids)
        future: Future[Any] = Future()
        with self._lock:
            self._pending[request_id] = (future, call.progress, call.task.name)
            try:
                pool_future = self._submit_locked(request_id, payload)
            except Exception as exc:
                del self._pending[request_id]
                return _resolved(Failure.from_exception(exc))
        pool_future.add_done_callback(lambda f: self._on_child_done(request_id, f))
        return future

    def _submit_locked(self, request_id: int, payload: bytes) -> Future[None]:
        if self._pool is None:
            raise ExecutorError("ProcessExecutor is stopped")
        try:
            return self._pool.submit(_child_run, request_id, payload)
        except BrokenProcessPool:
            # A child died earlier and broke the pool; its actions have failed. Start afresh.
            logger.warning("process pool is broken; starting a new one")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(_child_run, request_id, payload)

    @staticmethod
    def _payload(call: TaskCall) -> bytes:
        task, result = call.task, call.result
        try:
            loaded = load_task(task.task_type, task.name)
        except Exception as exc:
            raise SerializationError(
                f"task {task.name!r} cannot be rebuilt in a child process from its task type "
                f"{task.task_type!r}: {exc}"
            ) from exc
        if type(loaded) is not type(task) or (
            isinstance(task, FunctionTask)
            and isinstance(loaded, FunctionTask)
            and loaded.function is not task.function
        ):
            raise SerializationError(
                f"task {task.name!r}: {task.task_type!r} names another object in its module"
            )
        if isinstance(result, Failure):
            result = _portable(result)
        failures = {k: _portable(f) for k, f in call.flow_failures.items()}
        try:
            return pickle.dumps(
                (task.task_type, task.name, call.action, dict(call.arguments), result, failures),
                pickle.HIGHEST_PROTOCOL,
            )
        except Exception as exc:
            raise SerializationError(
                f"the arguments of task {task.name!r} cannot be pickled for a child process: {exc}"
            ) from exc

    def _on_child_done(self, request_id: int, pool_future: Future[None]) -> None:
        if pool_future.cancelled():
            error: Exception = ExecutorError("the process executor stopped before it ran")
        else:
            exc = pool_future.exception()
            if exc is None:
                return  # the outcome comes on the queue
            if isinstance(exc, BrokenProcessPool):
                error = WorkerLost(f"the child process running the task died: {exc}")
            else:
                error = ExecutorError(f"the process pool failed to run the task: {exc!r}")
            error.__cause__ = exc
        self._settle(request_id, Failure.from_exception(error))

    def _settle(self, request_id: int, outcome: Any) -> None:
        with self._lock:
            entry = self._pending.pop(request_id, None)
        if entry is None:
            logger.debug("ignoring a late outcome of process request %d", request_id)
            return
        entry[0].set_result(outcome)

    def _read(self, results: Any) -> None:
        """Drain the children's queue: progress to the engine, outcomes to the futures."""
        while True:
            try:
                message = results.get()
            except Exception:
                logger.exception("dropping an unreadable message from a child process")
                continue
            if message is None:
                return
            if message[0] == "progress":
                _, request_id, fraction, details = message
                entry = self._pending.get(request_id)
                if entry is not None and entry[1] is not None:
                    try:
                        entry[1](fraction, details)
                    except Exception:
                        logger.exception("progress listener failed")
                continue
            _, request_id, (kind, data) = message
            outcome: Any
            try:
                outcome = pickle.loads(data) if kind == "value" else Failure.from_dict(data)
            except Exception as exc:
                error = SerializationError(f"cannot read a result from a child process: {exc}")
                outcome = Failure.from_exception(error)
            self._settle(request_id, outcome)
