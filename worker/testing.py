"""Testing helper: drive a worker directly over the bus, without an engine.

:class:`Client` plays the engine's part of the wire protocol in its simplest form: it sends
:class:`~proxy.messages.Request` messages and collects the Responses and Heartbeats that come back,
so a test (ours, or a user's checking their own task modules on a real worker) can assert on
exactly what a worker replied::

    with Client("redis://127.0.0.1:6379/0", namespace="demo") as client:
        request = client.request("tasks:CreateVolume", {"size_gb": 10})
        assert client.result(request).state == "success"

It is single-threaded: responses are read while :meth:`Client.wait` (or :meth:`Client.result`)
drains the bus.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from proxy import names
from proxy.bus import Bus, Delivery
from proxy.messages import Heartbeat, Request, Response
from proxy.settings import BusSettings

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """Sends requests to worker queues; keeps every response (by request id) and heartbeat."""

    def __init__(
        self,
        broker_url: str,
        *,
        namespace: str = names.DEFAULT_NAMESPACE,
        secret: str | bytes | None = None,
        max_message_size: int = 1 << 20,
    ) -> None:
        settings = BusSettings.from_url(
            broker_url,
            namespace=namespace,
            secret=secret.encode() if isinstance(secret, str) else secret,
            max_message_size=max_message_size,
        )
        self.namespace = namespace
        self.bus = Bus(settings)
        self.bus.connect()
        self.reply_to = names.reply_queue(namespace, f"client-{uuid.uuid4().hex[:12]}")
        self.bus.declare_reply_queue(self.reply_to)
        self.bus.consume_replies(self.reply_to, self._on_reply)
        self.bus.consume_control(f"client-{uuid.uuid4().hex[:12]}", self._on_control)
        #: Responses per request id, in arrival order.
        self.responses: dict[str, list[Response]] = defaultdict(list)
        #: Every response, in arrival order.
        self.order: list[Response] = []
        #: Replies this client could not accept (e.g. a signature it cannot verify).
        self.rejected: list[Delivery] = []
        #: ``(time.monotonic() on arrival, heartbeat)`` for every heartbeat seen.
        self.heartbeats: list[tuple[float, Heartbeat]] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Delete the reply queue and control subscription; close the connection."""
        self.bus.close()

    def make(
        self,
        task_type: str,
        arguments: dict[str, Any] | None = None,
        *,
        deadline_in: float = 30.0,
        **fields: Any,
    ) -> Request:
        """A request for ``task_type`` (``module:QualName``) replying to this client; not sent.

        ``fields`` override any other Request field (``action``, ``execution_timeout``, ...).
        """
        values: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "attempt": 1,
            "task_type": task_type,
            "task_name": task_type.rpartition(":")[2].lower(),
            "action": "execute",
            "arguments": arguments or {},
            "reply_to": self.reply_to,
            "deadline": time.time() + deadline_in,
            "execution_timeout": None,
            "sent_at": time.time(),
        }
        values.update(fields)
        return Request(**values)

    def request(
        self,
        task_type: str,
        arguments: dict[str, Any] | None = None,
        *,
        queue: str = names.DEFAULT_QUEUE,
        deadline_in: float = 30.0,
        **fields: Any,
    ) -> Request:
        """Build (see :meth:`make`) and send a request to worker queue ``queue``."""
        request = self.make(task_type, arguments, deadline_in=deadline_in, **fields)
        self.bus.send_request(queue, request)
        return request

    def wait(self, predicate: Callable[[], T], timeout: float = 15.0, what: str = "") -> T:
        """Drain the bus until ``predicate()`` is truthy; return it. AssertionError at timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
            self.bus.drain(0.05)

    def result(self, request: Request, timeout: float = 15.0) -> Response:
        """The ``success`` or ``failure`` response to ``request``, waiting for it."""

        def settled() -> Response | None:
            for response in self.responses[request.id]:
                if response.state in ("success", "failure"):
                    return response
            return None

        found: Response | None = self.wait(settled, timeout, f"the result of {request.id}")
        assert found is not None
        return found

    def states(self, request: Request) -> list[str]:
        """The states of the responses to ``request`` so far, in arrival order."""
        return [response.state for response in self.responses[request.id]]

    def _on_reply(self, delivery: Delivery) -> None:
        if not isinstance(delivery.message, Response):
            self.rejected.append(delivery)
            return
        self.responses[delivery.message.request_id].append(delivery.message)
        self.order.append(delivery.message)

    def _on_control(self, delivery: Delivery) -> None:
        if isinstance(delivery.message, Heartbeat):
            self.heartbeats.append((time.monotonic(), delivery.message))
