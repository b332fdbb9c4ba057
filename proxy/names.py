"""Every queue, exchange and key name the bus uses, built from the namespace in one place.

With namespace ``NS``: requests for worker queue ``Q`` go to ``NS.requests.Q``; replies for one
executor to ``NS.replies.<executor id>``; heartbeats, discover and cancel to the ``NS.control``
fanout exchange, each subscriber reading its own ``NS.control.<subscriber id>`` queue.
"""

from __future__ import annotations

DEFAULT_NAMESPACE = "workerflow"
DEFAULT_QUEUE = "default"


def _check(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string, got {value!r}")
    if any(c.isspace() or c in "*#\x06\x16" for c in value):
        raise ValueError(f"{kind} {value!r} must not contain whitespace or any of * # \\x06 \\x16")
    return value


def request_queue(namespace: str, queue: str = DEFAULT_QUEUE) -> str:
    """The queue holding requests for worker queue ``queue``."""
    return f"{_check('namespace', namespace)}.requests.{_check('queue', queue)}"


def reply_queue(namespace: str, executor_id: str) -> str:
    """The queue one executor reads its responses from."""
    return f"{_check('namespace', namespace)}.replies.{_check('executor id', executor_id)}"


def control_exchange(namespace: str) -> str:
    """The fanout exchange carrying heartbeats, discover and cancel messages."""
    return f"{_check('namespace', namespace)}.control"


def control_queue(namespace: str, subscriber_id: str) -> str:
    """One subscriber's queue bound to the control exchange."""
    return f"{control_exchange(namespace)}.{_check('subscriber id', subscriber_id)}"


def kombu_key(namespace: str, what: str) -> str:
    """A key for kombu's own Redis bookkeeping (unacked hash, index and mutex), kept in the
    namespace."""
    return f"{_check('namespace', namespace)}._kombu.{what}"
