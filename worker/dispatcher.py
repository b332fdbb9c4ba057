"""Dispatcher: from a delivered request to a running job, and from a job's outcome to its reply.

It validates each request (the proxy has already checked the envelope, version, signature, size and
field types; here: known task type, sane timeout, readable failure records, not cancelled, deadline
not passed, not a duplicate), answers a bad one with a ``MessageRejected`` failure when it names a
reply address, and submits good ones to the pool. As the pool's
:class:`~worker.pool.PoolListener` it replies ``running``, coalesced ``progress`` and exactly one
``success`` or ``failure`` per request. Nothing here raises on bad input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from proxy import names
from proxy.bus import Delivery
from proxy.errors import InvalidMessage, ProxyError
from proxy.messages import Request
from worker.heartbeat import CancelledIds
from worker.job import Job, Outcome, fault
from worker.pool import Pool
from worker.progress import ProgressCoalescer
from worker.registry import Registry
from worker.replier import Replier
from workerflow.errors import MessageRejected, RequestTimeout, SerializationError, WorkerLost
from workerflow.failure import Failure

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)


class Dispatcher:
    """Requests in, replies out (see the module docstring); :meth:`attach` before any delivery."""

    def __init__(
        self,
        registry: Registry,
        worker_id: str,
        namespace: str,
        cancelled: CancelledIds,
        on_slot_freed: Callable[[], None],
    ) -> None:
        self._registry = registry
        self._worker_id = worker_id
        self._reply_prefix = names.reply_queue(namespace, "x")[:-1]
        self._cancelled = cancelled
        self._on_slot_freed = on_slot_freed
        self._lock = threading.Lock()
        self._active: dict[str, Job] = {}  # started and not answered yet
        # Requests taken while no slot was free. With prefetch kept at the free slots this stays
        # empty; it is the safety net for a broker that delivers one message too many.
        self._backlog: deque[Request] = deque()
        self._replying = 0  # results settled whose reply is being published
        self._pool: Pool | None = None
        self._replier: Replier | None = None
        self._coalescer: ProgressCoalescer | None = None

    def attach(self, pool: Pool, replier: Replier, coalescer: ProgressCoalescer) -> None:
        """Give the dispatcher where jobs run and where replies go."""
        self._pool, self._replier, self._coalescer = pool, replier, coalescer

    @property
    def running(self) -> list[str]:
        """Ids of the requests started and not answered yet."""
        with self._lock:
            return list(self._active)

    @property
    def free_slots(self) -> int:
        """Pool slots free and not promised to a held request."""
        if self._pool is None:
            return 0
        with self._lock:
            held = len(self._backlog)
        return max(0, self._pool.free_slots - held)

    @property
    def holding(self) -> bool:
        """Whether requests are held, waiting for a slot."""
        with self._lock:
            return bool(self._backlog)

    @property
    def idle(self) -> bool:
        """Nothing running, held, or being answered right now."""
        with self._lock:
            return not self._active and not self._backlog and not self._replying

    # -- requests in (consumer thread) ---------------------------------------------------------

    def on_delivery(self, delivery: Delivery) -> None:
        """Handle one message from a request queue; never raises except for broker errors."""
        try:
            delivery.ack()
            if delivery.error is not None:
                self._reject_invalid(delivery.error)
            elif isinstance(delivery.message, Request):
                self._accept(delivery.message)
            else:
                log.warning(
                    "message rejected: a %s on a request queue", type(delivery.message).__name__
                )
        except ProxyError:
            raise
        except Exception:
            # Input must never crash the worker; a bug here is logged and the message dropped.
            log.exception("message dropped: unexpected error handling it")

    def start_held(self) -> None:
        """Start held requests while slots are free."""
        while True:
            with self._lock:
                if not self._backlog or self._pool is None or self._pool.free_slots <= 0:
                    return
                request = self._backlog.popleft()
            self._dispatch(request)

    def _reject_invalid(self, error: InvalidMessage) -> None:
        log.warning(
            "message rejected (request %s): %s", error.request_id or "unknown", error.reason
        )
        if error.request_id and error.reply_to:
            self._reply_rejected(error.request_id, 1, error.reply_to, error.reason)

    def _reply_rejected(self, request_id: str, attempt: int, reply_to: str, reason: str) -> None:
        assert self._replier is not None
        self._replier.reject(request_id, attempt, reply_to, fault(MessageRejected, reason))

    def _accept(self, request: Request) -> None:
        label = f"{request.id} {request.task_name}"
        if not request.reply_to.startswith(self._reply_prefix):
            # Nowhere to answer: the bus only publishes to this namespace's reply queues.
            log.warning(
                "request %s dropped: reply_to %r is not a reply queue of this namespace",
                label,
                request.reply_to,
            )
            return
        reason = self.invalid_reason(request)
        if reason is not None:
            log.warning("request %s rejected: %s", label, reason)
            self._reply_rejected(request.id, request.attempt, request.reply_to, reason)
            return
        if self.free_slots <= 0:
            log.debug("request %s held: no free slot yet", label)
            with self._lock:
                self._backlog.append(request)
            return
        self._dispatch(request)

    def invalid_reason(self, request: Request) -> str | None:
        """Why this worker refuses ``request`` (a MessageRejected reason), or None."""
        if request.task_type not in self._registry:
            return (
                f"unknown task type {request.task_type!r}: worker {self._worker_id} serves "
                f"{len(self._registry)} task types"
            )
        if request.execution_timeout is not None and request.execution_timeout <= 0:
            return f"execution_timeout must be positive, got {request.execution_timeout}"
        try:
            if request.failure is not None:
                Failure.from_dict(request.failure)
            for data in request.flow_failures.values():
                Failure.from_dict(data)
        except SerializationError as exc:
            return f"bad failure record: {exc}"
        return None

    def _dispatch(self, request: Request) -> None:
        """Start ``request`` in a free slot, unless it was cancelled, expired or is a duplicate."""
        label = f"{request.id} {request.task_name}"
        if request.id in self._cancelled:
            log.info("request %s dropped: it was cancelled", label)
            return
        late = time.time() - request.deadline
        if late > 0:
            log.warning("request %s dropped: its start deadline passed %.3f s ago", label, late)
            assert self._replier is not None
            message = (
                f"request {request.id} for task {request.task_name!r} was not started before its "
                f"deadline ({late:.3f} s late); it will not run"
            )
            self._replier.reject(
                request.id, request.attempt, request.reply_to, fault(RequestTimeout, message)
            )
            return
        job = Job(
            request_id=request.id,
            attempt=request.attempt,
            task_type=request.task_type,
            task_name=request.task_name,
            action="revert" if request.action == "revert" else "execute",
            arguments=request.arguments,
            reply_to=request.reply_to,
            execution_timeout=request.execution_timeout,
            result=request.result,
            failure=request.failure,
            flow_failures=request.flow_failures,
        )
        with self._lock:
            if job.request_id in self._active:
                log.warning("request %s dropped: already running here", label)
                return
            self._active[job.request_id] = job
        assert self._pool is not None and self._coalescer is not None
        self._coalescer.begin(job)
        log.debug(
            "request %s: %s %s (attempt %d)", job.label, job.action, job.task_type, job.attempt
        )
        self._pool.submit(job)

    # -- outcomes out (pool threads): the PoolListener ---------------------------------------------

    def job_started(self, job: Job) -> None:
        """Reply ``running``."""
        if self._replier is not None:
            self._replier.running(job)

    def job_progress(self, job: Job, fraction: float, details: dict[str, Any]) -> None:
        """Coalesce and reply ``progress``."""
        if self._coalescer is not None:
            self._coalescer.update(job, fraction, details)

    def job_done(self, job: Job, outcome: Outcome) -> None:
        """Flush progress, then reply ``success`` or ``failure`` unless already answered."""
        with self._lock:
            if self._active.pop(job.request_id, None) is None:
                settled = False
            else:
                settled = True
                self._replying += 1  # keeps `idle` false until the reply is out
        if not settled:
            log.info("request %s: late %s discarded (already answered)", job.label, outcome.state)
            return
        try:
            self._reply(job, outcome)
        finally:
            with self._lock:
                self._replying -= 1

    def _reply(self, job: Job, outcome: Outcome) -> None:
        assert self._replier is not None and self._coalescer is not None
        self._coalescer.finish(job)
        elapsed = time.monotonic() - job.started_at
        if outcome.state == "success":
            log.debug("request %s: success in %.3f s", job.label, elapsed)
            self._replier.success(job, outcome.result)
        else:
            failure = outcome.failure or fault(WorkerLost, "the task failed without a record")
            log.info(
                "request %s: failure in %.3f s: %s",
                job.label,
                elapsed,
                (failure.get("exception_type_names") or ["?"])[0],
            )
            self._replier.failure(job, failure)

    def slot_freed(self) -> None:
        """Wake the consumer loop."""
        self._on_slot_freed()

    def _settle(self, job: Job) -> bool:
        """Mark ``job`` answered; False if it already was (a late result after a timeout)."""
        with self._lock:
            return self._active.pop(job.request_id, None) is not None

    def fail_unfinished(self, reason: str) -> int:
        """Answer every held and running request with ``WorkerLost`` (shutting down); how many."""
        with self._lock:
            jobs = list(self._active.values())
            held = list(self._backlog)
            self._backlog.clear()
        assert self._replier is not None
        for request in held:
            log.warning("request %s %s: not started: %s", request.id, request.task_name, reason)
            self._replier.reject(
                request.id,
                request.attempt,
                request.reply_to,
                fault(WorkerLost, f"{reason}; the request was not started"),
            )
        failed = len(held)
        for job in jobs:
            if not self._settle(job):
                continue
            log.warning("request %s: %s", job.label, reason)
            if self._coalescer is not None:
                self._coalescer.finish(job, flush=False)
            self._replier.failure(
                job, fault(WorkerLost, f"{reason}; task {job.task_name!r} did not finish")
            )
            failed += 1
        return failed
