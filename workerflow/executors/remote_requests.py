"""The life of one remote request on the engine side, and the tracker that times every one of them.

A request moves WAITING -> PENDING -> RUNNING -> DONE:

- WAITING: no live worker serves its task type on its queue yet; it is not published. If none
  appears within ``discovery_timeout`` it fails with ``NoWorkerAvailable``.
- PENDING: published; if no worker replies "running" within ``request_timeout`` it fails with
  ``RequestTimeout`` and a Cancel is broadcast so it never runs later.
- RUNNING: a worker started it. It fails with ``WorkerLost`` when that worker is silent for
  ``heartbeat_timeout`` or its heartbeats stop listing the request (two heartbeats at least half an
  interval apart that miss it), and with ``ExecutionTimeout`` as a backstop when it runs past its
  ``execution_timeout`` plus a ``heartbeat_timeout`` margin without the worker reporting it.
- DONE: settled; the record is dropped and any later response for its id is ignored and logged.

:class:`RequestTracker` holds the records and the worker directory behind one lock. Its methods
never call user code nor touch the network: they return :class:`Actions` (futures to resolve,
progress to report, requests to publish, ids to cancel) which the executor carries out outside the
lock. Every method takes ``now`` (``time.monotonic()``) so tests drive it with a fake clock. This
module imports neither kombu nor ``proxy`` at run time.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from workerflow.errors import (
    ExecutionTimeout,
    NoWorkerAvailable,
    RemoteFault,
    RequestTimeout,
    SerializationError,
    WorkerLost,
)
from workerflow.executors.discovery import WorkerDirectory
from workerflow.failure import Failure

if TYPE_CHECKING:
    from proxy.messages import Heartbeat, Response
    from workerflow.task import ProgressSink

__all__ = ["Actions", "RemoteRequest", "RequestState", "RequestTracker"]

logger = logging.getLogger(__name__)

#: How many settled request ids are remembered, to tell a late response from an unknown one.
_SETTLED_MEMORY = 4096


class RequestState(StrEnum):
    """Where a remote request stands on the engine side."""

    WAITING = "WAITING"  # no live worker serves it yet; not published
    PENDING = "PENDING"  # published, no worker has started it
    RUNNING = "RUNNING"  # a worker replied "running"
    DONE = "DONE"  # settled; its future holds the value or a Failure


class RemoteRequest:
    """One in-flight request: identity, its future, and the one deadline of its current state.

    Kept small on purpose (slots, no per-request timers or threads): the engine may keep a
    thousand of these in flight per executor.
    """

    __slots__ = (
        "action",
        "attempt",
        "deadline",
        "execution_timeout",
        "future",
        "id",
        "message",
        "missing_since",
        "progress",
        "queue",
        "state",
        "task_name",
        "task_type",
        "worker_id",
    )

    def __init__(
        self,
        request_id: str,
        *,
        attempt: int,
        task_name: str,
        task_type: str,
        action: str,
        queue: str,
        future: Future[Any],
        progress: ProgressSink | None = None,
        execution_timeout: float | None = None,
        message: Any = None,
    ) -> None:
        self.id = request_id
        self.attempt = attempt
        self.task_name = task_name
        self.task_type = task_type
        self.action = action
        self.queue = queue
        self.future = future
        self.progress = progress
        self.execution_timeout = execution_timeout
        #: The wire message, kept only while WAITING (published later); None afterwards.
        self.message = message
        self.state = RequestState.WAITING
        #: Monotonic time the current state times out, or None for no per-request deadline.
        self.deadline: float | None = None
        self.worker_id: str | None = None
        #: When a heartbeat of its worker first failed to list it (None while listed).
        self.missing_since: float | None = None

    def describe(self) -> str:
        """``task 'name' (request <id>, attempt n, execute)`` for log lines and failure messages."""
        return f"task {self.task_name!r} ({self.action} request {self.id}, attempt {self.attempt})"

    def __repr__(self) -> str:
        return f"<RemoteRequest {self.id} {self.task_name!r} {self.state}>"


@dataclass
class Actions:
    """What the executor must do, outside the tracker's lock, after a tracker call."""

    #: (callback, fraction, details), in arrival order.
    progress: list[tuple[ProgressSink, float, dict[str, Any]]] = field(default_factory=list)
    #: Records that just left WAITING: publish ``record.message``.
    publish: list[RemoteRequest] = field(default_factory=list)
    #: Request ids to broadcast a Cancel for, so they never run later.
    cancel: list[str] = field(default_factory=list)
    #: (future, value or Failure) to resolve.
    settle: list[tuple[Future[Any], Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.progress or self.publish or self.cancel or self.settle)


def fault(error: type[RemoteFault] | type[Exception], message: str) -> Failure:
    """A Failure holding a fresh ``error(message)``, as the future's value."""
    return Failure.from_exception(error(message))


class RequestTracker:
    """Every in-flight request of one executor, the worker directory, and their deadlines."""

    def __init__(
        self,
        *,
        discovery_timeout: float,
        request_timeout: float,
        heartbeat_timeout: float,
    ) -> None:
        self.discovery_timeout = discovery_timeout
        self.request_timeout = request_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.directory = WorkerDirectory(heartbeat_timeout)
        self._lock = threading.Lock()
        self._requests: dict[str, RemoteRequest] = {}
        # WAITING ids by (queue, task_type); insertion-ordered so they publish in submission order.
        self._waiting: dict[tuple[str, str], dict[str, None]] = {}
        # RUNNING ids by worker id, for liveness checks per worker rather than per request.
        self._running_on: dict[str, dict[str, None]] = {}
        # (deadline, sequence, request id); stale entries are skipped and compacted away.
        self._deadlines: list[tuple[float, int, str]] = []
        self._sequence = 0
        self._settled: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)

    def get(self, request_id: str) -> RemoteRequest | None:
        """The in-flight record for ``request_id``, if any."""
        with self._lock:
            return self._requests.get(request_id)

    # -- submission ----------------------------------------------------------------------------

    def add(self, record: RemoteRequest, now: float) -> bool:
        """Track a new request; True when a live worker serves it and it should be published now.

        Otherwise it is WAITING (``record.message`` must hold the message to publish later).
        """
        with self._lock:
            if record.id in self._requests:
                raise ValueError(f"request id {record.id} is already in flight")
            self._requests[record.id] = record
            if self.directory.serves(record.task_type, record.queue, now):
                self._to_pending(record, now)
                return True
            record.state = RequestState.WAITING
            self._waiting.setdefault((record.queue, record.task_type), {})[record.id] = None
            self._set_deadline(record, now + self.discovery_timeout)
            return False

    def discard(self, request_id: str, reason: str) -> RemoteRequest | None:
        """Drop a request that could not be published; None if it was already settled."""
        with self._lock:
            record = self._requests.get(request_id)
            if record is None:
                return None
            self._remove(record, reason)
            return record

    def settle_all(self, reason: str) -> list[tuple[RemoteRequest, RequestState]]:
        """Drop every in-flight request (executor stopping, broker gone); the caller fails them.

        Returns each record with the state it was in.
        """
        with self._lock:
            records = [(record, record.state) for record in self._requests.values()]
            for record, _ in records:
                self._remove(record, reason)
            return records

    # -- messages from workers -----------------------------------------------------------------

    def on_response(self, response: Response, now: float) -> Actions:
        """Apply a worker's response: running, progress, success or failure."""
        actions = Actions()
        with self._lock:
            record = self._requests.get(response.request_id)
            if record is None:
                self._log_stray(response)
                return actions
            if response.attempt != record.attempt:
                logger.warning(
                    "ignoring %s response for %s from worker %s: it names attempt %s",
                    response.state, record.describe(), response.worker_id, response.attempt,
                )  # fmt: skip
                return actions
            self.directory.saw(response.worker_id, now)
            if record.state is RequestState.RUNNING and response.worker_id != record.worker_id:
                # The same request delivered twice (e.g. an AMQP redelivery): the first one counts.
                logger.warning(
                    "ignoring %s response for %s from worker %s: it runs on worker %s",
                    response.state, record.describe(), response.worker_id, record.worker_id,
                )  # fmt: skip
                return actions
            state = response.state
            if state in ("running", "progress") and record.state is not RequestState.RUNNING:
                self._to_running(record, response.worker_id, now)
            if state == "running":
                pass
            elif state == "progress":
                if record.progress is not None:
                    fraction = 0.0 if response.progress is None else float(response.progress)
                    actions.progress.append((record.progress, fraction, dict(response.details)))
            elif state == "success":
                self._settle(record, response.result, actions, f"success from {response.worker_id}")
            elif state == "failure":
                self._settle(
                    record, _remote_failure(record, response), actions,
                    f"failure from {response.worker_id}",
                )  # fmt: skip
            else:
                logger.warning(
                    "ignoring response for %s with unknown state %r", record.describe(), state
                )
        return actions

    def on_heartbeat(self, heartbeat: Heartbeat, now: float) -> Actions:
        """Record a worker's heartbeat: publish requests it can serve, check what it runs."""
        actions = Actions()
        with self._lock:
            worker_id = heartbeat.worker_id
            gained = self.directory.update(
                worker_id,
                queues=heartbeat.queues,
                task_types=heartbeat.task_types,
                interval=heartbeat.interval,
                stopping=heartbeat.stopping,
                now=now,
            )
            if gained and self._waiting:
                self._publish_waiting(now, actions)
            running_here = self._running_on.get(worker_id)
            if running_here:
                listed = set(heartbeat.running)
                grace = max(heartbeat.interval, 0.0) / 2
                for request_id in list(running_here):
                    record = self._requests[request_id]
                    if request_id in listed:
                        record.missing_since = None
                    elif record.missing_since is None:
                        record.missing_since = now
                    elif now - record.missing_since >= grace:
                        self._settle(
                            record,
                            fault(
                                WorkerLost,
                                f"worker {worker_id} running {record.describe()} no longer lists "
                                f"it in its heartbeats (it restarted or dropped the request); "
                                f"declared lost after two heartbeats without it",
                            ),
                            actions,
                            "worker lost (not listed)",
                        )
                        actions.cancel.append(request_id)
        return actions

    # -- the timer -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest per-request deadline (monotonic), if any; liveness is checked every tick."""
        with self._lock:
            return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> Actions:
        """Fail every request whose deadline passed or whose worker went silent."""
        actions = Actions()
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                when, _, request_id = heapq.heappop(self._deadlines)
                record = self._requests.get(request_id)
                if record is None or record.deadline != when:
                    continue  # stale entry: settled, or its state moved on
                self._timeout(record, actions)
            for worker_id in [w for w, ids in self._running_on.items() if ids]:
                last = self.directory.last_seen(worker_id)
                if last is not None and now - last < self.heartbeat_timeout:
                    continue
                silent = "never" if last is None else f"{now - last:.1f} s ago"
                for request_id in list(self._running_on.get(worker_id, ())):
                    record = self._requests[request_id]
                    self._settle(
                        record,
                        fault(
                            WorkerLost,
                            f"worker {worker_id} running {record.describe()} sent no heartbeat "
                            f"for heartbeat_timeout={self.heartbeat_timeout} s (last heard "
                            f"{silent})",
                        ),
                        actions,
                        "worker lost (silent)",
                    )
                    actions.cancel.append(request_id)
                self.directory.forget(worker_id)
            self.directory.prune(now)
        return actions

    def refresh_liveness(self, now: float) -> None:
        """We could not hear anyone (our own connection was down): restart every worker's clock.

        Without this a broker outage on our side would declare every busy worker lost.
        """
        with self._lock:
            for worker_id in self._running_on:
                self.directory.saw(worker_id, now)

    # -- internals (lock held) -----------------------------------------------------------------

    def _to_pending(self, record: RemoteRequest, now: float) -> None:
        record.state = RequestState.PENDING
        self._set_deadline(record, now + self.request_timeout)

    def _to_running(self, record: RemoteRequest, worker_id: str, now: float) -> None:
        record.state = RequestState.RUNNING
        record.worker_id = worker_id
        record.missing_since = None
        self._running_on.setdefault(worker_id, {})[record.id] = None
        if record.execution_timeout is None:
            record.deadline = None
        else:
            self._set_deadline(record, now + record.execution_timeout + self.heartbeat_timeout)
        logger.debug("%s running on worker %s", record.describe(), worker_id)

    def _publish_waiting(self, now: float, actions: Actions) -> None:
        for key in list(self._waiting):
            queue, task_type = key
            if not self.directory.serves(task_type, queue, now):
                continue
            for request_id in self._waiting.pop(key):
                record = self._requests[request_id]
                self._to_pending(record, now)
                actions.publish.append(record)

    def _timeout(self, record: RemoteRequest, actions: Actions) -> None:
        if record.state is RequestState.WAITING:
            failure = fault(
                NoWorkerAvailable,
                f"no live worker serves task type {record.task_type!r} on queue {record.queue!r} "
                f"for {record.describe()} within discovery_timeout={self.discovery_timeout} s",
            )
        elif record.state is RequestState.PENDING:
            failure = fault(
                RequestTimeout,
                f"no worker started {record.describe()} on queue {record.queue!r} within "
                f"request_timeout={self.request_timeout} s; it was cancelled and will not run",
            )
            actions.cancel.append(record.id)
        else:
            failure = fault(
                ExecutionTimeout,
                f"{record.describe()} ran past execution_timeout={record.execution_timeout} s "
                f"plus a heartbeat_timeout={self.heartbeat_timeout} s margin on worker "
                f"{record.worker_id}, which did not report it",
            )
            actions.cancel.append(record.id)
        self._settle(record, failure, actions, f"timed out in {record.state}")

    def _settle(self, record: RemoteRequest, value: Any, actions: Actions, reason: str) -> None:
        if isinstance(value, Failure) and value.check(RemoteFault):
            logger.warning("%s", value.message)
        self._remove(record, reason)
        actions.settle.append((record.future, value))

    def _remove(self, record: RemoteRequest, reason: str) -> None:
        del self._requests[record.id]
        if record.state is RequestState.WAITING:
            key = (record.queue, record.task_type)
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.pop(record.id, None)
                if not waiting:
                    del self._waiting[key]
        elif record.state is RequestState.RUNNING and record.worker_id is not None:
            running = self._running_on.get(record.worker_id)
            if running is not None:
                running.pop(record.id, None)
                if not running:
                    del self._running_on[record.worker_id]
        record.state = RequestState.DONE
        record.deadline = None
        record.message = None
        self._settled[record.id] = reason
        if len(self._settled) > _SETTLED_MEMORY:
            self._settled.popitem(last=False)
        logger.debug("%s settled: %s", record.describe(), reason)
        self._compact()

    def _set_deadline(self, record: RemoteRequest, when: float) -> None:
        record.deadline = when
        self._sequence += 1
        heapq.heappush(self._deadlines, (when, self._sequence, record.id))

    def _compact(self) -> None:
        # Settled requests leave their heap entries behind; rebuild before they outnumber live ones.
        if len(self._deadlines) <= 2 * len(self._requests) + 64:
            return
        self._deadlines = [
            entry
            for entry in self._deadlines
            if (r := self._requests.get(entry[2])) is not None and r.deadline == entry[0]
        ]
        heapq.heapify(self._deadlines)

    def _log_stray(self, response: Response) -> None:
        reason = self._settled.get(response.request_id)
        if reason is not None:
            logger.info(
                "ignoring late %s response for settled request %s (attempt %s) from worker %s; "
                "it was settled earlier (%s)",
                response.state, response.request_id, response.attempt, response.worker_id, reason,
            )  # fmt: skip
        else:
            logger.debug(
                "ignoring %s response for unknown request %s from worker %s",
                response.state, response.request_id, response.worker_id,
            )  # fmt: skip


def _remote_failure(record: RemoteRequest, response: Response) -> Failure:
    """The Failure a worker sent, or a SerializationError Failure saying why it cannot be read."""
    try:
        if response.failure is None:
            raise SerializationError("the failure response carries no failure")
        return Failure.from_dict(response.failure)
    except SerializationError as exc:
        return fault(
            SerializationError,
            f"worker {response.worker_id} reported a failure for {record.describe()} that "
            f"cannot be read: {exc}",
        )
