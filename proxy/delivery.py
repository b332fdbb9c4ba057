"""What a consumer hands to its caller: a decoded message, or the reason it was rejected."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.codec import Codec
from proxy.errors import InvalidMessage
from proxy.messages import Cancel, Discover, Heartbeat, Message, Request, Response

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """What ``on_message`` receives: a decoded message, or the reason it was rejected.

    Exactly one of ``message`` and ``error`` is set. ``queue`` is the queue it was read from.
    ``ack()`` acknowledges an AMQP request delivery (call it from the bus's thread, once the
    request is accepted or dropped); everywhere else it is a no-op.
    """

    message: Request | Response | Heartbeat | Discover | Cancel | None = None
    error: InvalidMessage | None = None
    queue: str = ""
    _ack: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def ack(self) -> None:
        """Acknowledge the delivery (no-op where the consumer is ``no_ack``); idempotent."""
        if self._ack is not None:
            self._ack()


#: The callback a consumer calls with each delivery.
OnMessage = Callable[[Delivery], None]


def decode_delivery(
    codec: Codec, body: bytes, queue: str, ack: Callable[[], None] | None
) -> Delivery:
    """Decode ``body`` read from ``queue`` into a ``Delivery``; a message that fails validation
    becomes a delivery carrying the error (and is logged), never an exception."""
    try:
        message: Message = codec.decode(body)
    except InvalidMessage as exc:
        LOG.warning("rejected a message on %s: %s (request %s)", queue, exc.reason, exc.request_id)
        return Delivery(None, exc, queue, ack)
    return Delivery(message, None, queue, ack)
