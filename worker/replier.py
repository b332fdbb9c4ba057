"""Replier: the worker's one publishing connection, shared by its threads under a lock.

Replies for requests the engine has cancelled are dropped (see ``_publish``).
A :class:`proxy.bus.Bus` is not thread-safe. Pool threads finish jobs and report progress
concurrently, so replies go through this lock-protected Bus (measured against handing every reply
to the consumer thread, which has to be woken out of its blocking ``drain`` first: the lock is both
simpler and faster; see the report). Replies that cannot be encoded become failures the engine can
read, and a broker that stays unreachable past the Bus's retries is reported once to
``on_broker_lost``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from proxy.bus import Bus
from proxy.errors import BrokerUnavailable, EncodeError, ProxyError
from proxy.messages import Request, Response
from worker.heartbeat import CancelledIds
from worker.job import Job, fault
from workerflow.errors import SerializationError

__all__ = ["Replier"]

log = logging.getLogger(__name__)

#: How much of a failure's message and traceback is kept when the whole does not fit a message.
_KEEP_CHARS = 8000


class Replier:
    """Builds Responses for one worker and publishes them; never raises into task threads."""

    def __init__(
        self,
        bus: Bus,
        worker_id: str,
        on_broker_lost: Callable[[BaseException], None],
        cancelled: CancelledIds,
    ) -> None:
        self._bus = bus
        self._worker_id = worker_id
        self._cancelled = cancelled
        self._on_broker_lost = on_broker_lost
        self._lock = threading.Lock()
        self.sent = 0  # responses published, for logs and measurements

    def close(self) -> None:
        """Close the publishing connection."""
        with self._lock:
            self._bus.close()

    def running(self, job: Job) -> None:
        """Tell the engine ``job`` started."""
        self._send(job.reply_to, self._response(job, "running"), job.label)

    def progress(self, job: Job, fraction: float, details: dict[str, Any]) -> None:
        """A coalesced progress value; details that cannot be encoded are dropped, not the value."""
        response = self._response(job, "progress", progress=fraction, details=details)
        try:
            self._publish(job.reply_to, response)
        except EncodeError as exc:
            log.warning("request %s: progress details dropped: %s", job.label, exc)
            self._send(job.reply_to, self._response(job, "progress", progress=fraction), job.label)
        except ProxyError as exc:
            self._failed(job.label, exc)

    def success(self, job: Job, result: Any) -> None:
        """The result; a result the wire cannot carry becomes a SerializationError failure."""
        try:
            self._publish(job.reply_to, self._response(job, "success", result=result))
        except EncodeError as exc:
            message = (
                f"the result of task {job.task_name!r} ({job.task_type}) cannot be sent: {exc}"
            )
            log.error("request %s: %s", job.label, message)
            self.failure(job, fault(SerializationError, message))
        except ProxyError as exc:
            self._failed(job.label, exc)

    def failure(self, job: Job, failure: dict[str, Any]) -> None:
        """A Failure dict for ``job``; one too big for a message is sent shortened."""
        try:
            self._publish(job.reply_to, self._response(job, "failure", failure=failure))
        except EncodeError as exc:
            log.warning("request %s: failure shortened to fit a message: %s", job.label, exc)
            short = {
                **failure,
                "message": str(failure.get("message", ""))[:_KEEP_CHARS],
                "traceback_text": str(failure.get("traceback_text", ""))[-_KEEP_CHARS:],
                "cause": None,
            }
            self._send(job.reply_to, self._response(job, "failure", failure=short), job.label)
        except ProxyError as exc:
            self._failed(job.label, exc)

    def reject(self, request_id: str, attempt: int, reply_to: str, failure: dict[str, Any]) -> None:
        """A failure for a request that never became a job (rejected, expired)."""
        response = Response(
            request_id=request_id,
            attempt=attempt,
            worker_id=self._worker_id,
            state="failure",
            failure=failure,
        )
        self._send(reply_to, response, request_id)

    def hand_back(self, queue: str, request: Request) -> bool:
        """Put a request this worker took but did not start back on its queue."""
        try:
            with self._lock:
                self._bus.send_request(queue, request)
        except ProxyError as exc:
            self._failed(request.id, exc)
            return False
        return True

    def _response(self, job: Job, state: str, **fields: Any) -> Response:
        return Response(
            request_id=job.request_id,
            attempt=job.attempt,
            worker_id=self._worker_id,
            state=state,
            **fields,
        )

    def _publish(self, reply_to: str, response: Response) -> None:
        if response.request_id in self._cancelled:
            # The engine settled this request and may have deleted its reply queue: a reply now
            # would only recreate that queue as a key nobody reads.
            log.debug(
                "request %s: %s reply dropped, the request was cancelled",
                response.request_id,
                response.state,
            )
            return
        with self._lock:
            self._bus.send_response(reply_to, response)
            self.sent += 1

    def _send(self, reply_to: str, response: Response, label: str) -> None:
        try:
            self._publish(reply_to, response)
        except ProxyError as exc:
            self._failed(label, exc)

    def _failed(self, label: str, exc: ProxyError) -> None:
        if isinstance(exc, BrokerUnavailable):
            log.error("request %s: cannot reply, the broker is unreachable: %s", label, exc)
            self._on_broker_lost(exc)
        else:
            log.error("request %s: cannot reply: %s", label, exc)
