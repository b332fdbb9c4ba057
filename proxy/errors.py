"""The exceptions of the message bus.

``proxy`` stands alone, so it has its own small tree; ``workerflow`` and ``worker`` translate these
into ``workerflow.errors`` at their boundary, so users only ever see ``WorkerflowError``::

    ProxyError                  root of everything raised by proxy
    ├── InvalidMessage          a received message failed decoding or validation (carries the
    reason) ├── EncodeError             a message cannot be sent: not msgpack-safe, or bigger than
    the limit └── BrokerUnavailable       the broker could not be reached within the retry deadline
"""

from __future__ import annotations


class ProxyError(Exception):
    """Root of every exception raised by the ``proxy`` package."""


class InvalidMessage(ProxyError):  # noqa: N818 (the protocol's name)
    """A received message was rejected: not decodable, wrong version, bad signature, bad field.

    ``reason`` says why in words fit for a log line or a ``MessageRejected`` reply. ``request_id``
    and ``reply_to`` are set when they could be read from the message (possibly before its
    signature was checked, so they are a best-effort address, not an authenticated one).
    """

    def __init__(
        self, reason: str, *, request_id: str | None = None, reply_to: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id
        self.reply_to = reply_to

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_invalid, (self.reason, self.request_id, self.reply_to))


def _rebuild_invalid(reason: str, request_id: str | None, reply_to: str | None) -> InvalidMessage:
    return InvalidMessage(reason, request_id=request_id, reply_to=reply_to)


class EncodeError(ProxyError):
    """A message cannot be sent: a value msgpack cannot carry (the message names its path), or the
    encoded message is bigger than ``max_message_size``."""


class BrokerUnavailable(ProxyError):  # noqa: N818 (the protocol's name)
    """The broker did not answer within the retry deadline (the message names the URL, never the
    password)."""
