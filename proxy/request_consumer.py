"""The consumer of request queues, paced by credit: it takes no more requests than the caller has
free slots.

Each delivered request (a good one or an error) uses one unit of credit before ``on_message`` is
called; the caller gives credit back with ``set_credit(free slots)``. On Redis and memory the
consumer is ``no_ack`` and kombu's channel QoS asks ``has_credit()`` before every read, so no
``BRPOP`` is sent while the credit is 0; a message a read already in flight returns is held until
credit comes back (and handed back to its queue on close). On AMQP every delivery is acked by the
caller and ``basic_qos(prefetch_count)`` is kept at credit + unacked deliveries; with both at 0 the
consumer is cancelled, since a prefetch count of 0 would mean unlimited.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from proxy.codec import CONTENT_ENCODING, CONTENT_TYPE, Codec
from proxy.connection import Connection, load_kombu
from proxy.delivery import OnMessage, decode_delivery

LOG = logging.getLogger(__name__)


def check_credit(n: int) -> int:
    """``n`` if it is a valid prefetch (an int >= 0), else ``ValueError``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"prefetch must be an integer >= 0, got {n!r}")
    return n


def kombu_request_queue(name: str) -> Any:
    """The kombu queue for request queue ``name``: durable, on the default exchange."""
    kombu = load_kombu()
    return kombu.Queue(name, kombu.Exchange(""), routing_key=name, durable=True, auto_delete=False)


class RequestConsumer:
    """Consumes a bus's request queues on its own channel, paced by the caller's credit.

    ``in_drain`` is set by the bus while it drains: AMQP's ``basic_qos`` is then synced once per
    drain step instead of on every ack.
    """

    def __init__(self, connection: Connection, codec: Codec) -> None:
        self._connection = connection
        self._codec = codec
        self.queues: list[str] = []
        self._on_message: OnMessage | None = None
        #: Deliveries handed to ``on_message`` so far (the bus counts handled events with it).
        self.delivered = 0
        self.in_drain = False
        self.closing = False
        self._credit = 0
        self._unacked = 0
        self._qos_sent: int | None = None
        self._consuming = False
        self._consumer: Any = None
        #: Messages read while there was no credit: (kombu message, queue, connection generation).
        self._held: deque[tuple[Any, str, int]] = deque()

    @property
    def active(self) -> bool:
        """True once ``consume()`` was called."""
        return self._on_message is not None

    def consume(self, queues: list[str], on_message: OnMessage, prefetch: int) -> None:
        """Consume ``queues`` (full names) with ``prefetch`` units of credit, replacing earlier
        queues; requests already held are delivered to the new ``on_message``."""
        self._credit = check_credit(prefetch)
        self.queues = queues
        self._on_message = on_message
        self._connection.call("consume", self.start)

    def set_credit(self, n: int) -> None:
        """The caller's free slots changed to ``n``."""
        self._credit = check_credit(n)
        if not self._connection.virtual and not self.in_drain and self._connection.connected:
            self._connection.call("qos", self.sync_amqp_credit)

    def start(self) -> None:
        """(Re)create the kombu consumer on the current connection."""
        kombu = load_kombu()
        virtual = self._connection.virtual
        if self._consumer is not None:
            self._consumer.cancel()
            self._consumer = None
            self._consuming = False
        channel = self._connection.channel("requests")
        if virtual:
            # kombu's virtual transports (Redis, memory) ask the channel's QoS before every read:
            # with no credit no BRPOP is sent and a reply already in flight stays unread until
            # credit returns.
            channel.qos.can_consume = self.has_credit
        self._consumer = kombu.Consumer(
            channel,
            queues=[kombu_request_queue(q) for q in self.queues],
            no_ack=virtual,
            on_message=self._on_request,
            accept=[CONTENT_TYPE],
        )
        if virtual:
            self._consumer.consume()
            self._consuming = True
        else:
            self.sync_amqp_credit()

    def has_credit(self) -> bool:
        """Whether a read may take one more request now."""
        return self._credit > 0 and not self.closing

    def sync_amqp_credit(self) -> None:
        """AMQP: prefetch = free slots + unacked deliveries; no consumer at all when that is 0 (a
        prefetch_count of 0 would mean unlimited)."""
        consumer = self._consumer
        if consumer is None or self.closing:
            return
        want = self._credit + self._unacked
        if want == 0:
            if self._consuming:
                consumer.cancel()
                self._consuming = False
            return
        if want != self._qos_sent:
            consumer.channel.basic_qos(0, want, True)
            self._qos_sent = want
        if not self._consuming:
            consumer.consume()
            self._consuming = True

    def deliver_held(self) -> None:
        """Deliver held requests while there is credit (AMQP ones only from this connection: the
        broker redelivers the others)."""
        while self._held and self._credit > 0 and not self.closing:
            raw, queue, generation = self._held.popleft()
            if generation == self._connection.generation or self._connection.virtual:
                self._deliver(raw, queue)

    def reset(self) -> None:
        """The connection was dropped: forget the consumer made on it."""
        self._consumer = None
        self._qos_sent = None
        self._consuming = False
        if not self._connection.virtual:
            # The broker redelivers whatever that connection held unacked.
            self._held.clear()
            self._unacked = 0

    def stop_reading(self) -> None:
        """Redis and memory: close the request channel before closing the bus. A ``BRPOP``
        already sent is read on the way, and its message is held (then handed back)."""
        if self._connection.virtual and self._connection.close_channel("requests"):
            self._consumer = None

    def hand_back(self) -> None:
        """Put back requests taken from Redis or memory that were never delivered (AMQP redelivers
        them by itself when the channel closes)."""
        while self._held and self._connection.virtual:
            raw, queue, _ = self._held.popleft()
            LOG.info("handing back a request not delivered before close to %s", queue)
            self._connection.producer.publish(
                raw.body,
                routing_key=queue,
                content_type=CONTENT_TYPE,
                content_encoding=CONTENT_ENCODING,
            )
        self._held.clear()

    # -- internals
    # -------------------------------------------------------------------------------------

    def _on_request(self, raw: Any) -> None:
        queue = raw.delivery_info.get("routing_key") or ""
        if self._credit <= 0 or self.closing:
            self._held.append((raw, queue, self._connection.generation))
            return
        self._deliver(raw, queue)

    def _deliver(self, raw: Any, queue: str) -> None:
        assert self._on_message is not None
        self._credit -= 1
        ack = None
        if not self._connection.virtual:
            self._unacked += 1
            ack = self._acker(raw)
        self.delivered += 1
        self._on_message(decode_delivery(self._codec, raw.body, queue, ack))

    def _acker(self, raw: Any) -> Callable[[], None]:
        generation = self._connection.generation
        done = False

        def ack() -> None:
            nonlocal done
            if done:
                return
            done = True
            if generation != self._connection.generation:
                return  # that connection is gone; the broker redelivers the message
            self._unacked -= 1
            raw.ack()
            if not self.in_drain:
                self._connection.call("qos", self.sync_amqp_credit)

        return ack
