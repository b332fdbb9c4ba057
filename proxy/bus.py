"""The message bus: protocol messages over one broker connection, for one namespace.

A ``Bus`` belongs to one thread (it is not thread-safe; a thread that needs the bus, such as a
worker's heartbeat thread, opens its own). Typical use::

    bus = Bus(BusSettings.from_url("redis://localhost:6379/0"))
    bus.connect()
    bus.consume_requests(["default"], on_message, prefetch=4)
    while running:
        bus.drain(1.0)          # calls on_message(Delivery) for what arrived
    bus.close()

Design, measured on Redis: requests and replies go to the default exchange with the queue name as
routing key, so a publish is one ``LPUSH`` through a long-lived producer channel (nothing is
declared per publish); only the control fanout goes through an exchange (a Redis ``PUBLISH``).
The connection and its retries live in ``proxy.connection``, the credit-paced consumer of request
queues in ``proxy.request_consumer``; ``Delivery`` (in ``proxy.delivery``) is importable from here.
kombu is imported only when a bus connects.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from typing import Any

from proxy import names
from proxy.codec import CONTENT_ENCODING, CONTENT_TYPE, Codec
from proxy.connection import Connection, load_kombu
from proxy.delivery import Delivery, OnMessage, decode_delivery
from proxy.errors import EncodeError
from proxy.messages import Cancel, Discover, Heartbeat, Request, Response
from proxy.request_consumer import RequestConsumer, kombu_request_queue
from proxy.settings import BusSettings

__all__ = ["DRAIN_BATCH", "REPLY_QUEUE_EXPIRES", "Bus", "Delivery", "OnMessage"]

LOG = logging.getLogger(__name__)

#: On AMQP a reply queue nobody consumes disappears after this many seconds (x-expires).
REPLY_QUEUE_EXPIRES = 600.0
#: Events handled in one drain() call after the first, so one busy queue cannot starve the caller.
DRAIN_BATCH = 100


class Bus:
    """A connection to the broker carrying protocol messages for one namespace.

    Not thread-safe: use one bus per thread. Connection loss inside ``drain()`` or a publish is
    retried with bounded exponential backoff and jitter, re-declaring queues and consumers, for up
    to ``settings.retry_deadline`` seconds; then ``BrokerUnavailable`` is raised.
    """

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self.codec = Codec(secret=settings.secret, max_message_size=settings.max_message_size)
        self._ns = settings.namespace
        self._reply_prefix = names.reply_queue(self._ns, "x")[:-1]
        self._connection = Connection(settings, on_open=self._on_open, on_drop=self._on_drop)
        self._requests = RequestConsumer(self._connection, self.codec)
        self._control_exchange: Any = None
        self._handled = 0
        # What to re-create after a reconnect.
        self._reply_queues: set[str] = set()
        self._replies: dict[str, OnMessage] = {}
        self._control: tuple[str, OnMessage] | None = None
        # Objects of the current connection.
        self._declared: set[str] = set()
        self._reply_consumers: dict[str, Any] = {}
        self._control_consumer: Any = None

    # -- lifecycle
    # -----------------------------------------------------------------------------------

    def __enter__(self) -> Bus:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True between a successful ``connect()`` and ``close()``."""
        return self._connection.connected and not self._connection.closed

    def connect(self) -> None:
        """Connect to the broker, retrying with backoff; raises ``BrokerUnavailable`` after
        ``settings.retry_deadline`` seconds. Does nothing if already connected."""
        self._connection.connect()

    def close(self) -> None:
        """Delete the reply and control queues this bus declared, hand back requests it took but
        never delivered, and close the connection. Idempotent; never raises for a broken
        connection."""
        if self._connection.closed:
            return
        self._requests.closing = True
        politely = False
        try:
            if self._connection.connected:
                self._close_gracefully()
                politely = True
        except Exception as exc:  # a dead broker must not make close() fail
            LOG.debug("closing the bus to %s: %s", self.settings.safe_url, exc)
        finally:
            self._connection.close(politely=politely)

    def _close_gracefully(self) -> None:
        self._requests.stop_reading()
        self._requests.hand_back()
        events = self._connection.existing_channel("events")
        if events is not None and getattr(events, "_in_poll", None):
            # kombu's Redis channel.close() would wait up to the BRPOP timeout for the reply to a
            # BRPOP already sent on the reply queues; this bus is deleting them, so drop that read
            # instead.
            events.client.connection.disconnect()
            events._in_poll = None
        if self._control is not None:
            self._delete(names.control_queue(self._ns, self._control[0]), control=True)
        for name in list(self._reply_queues):
            self._delete(name)

    # -- publishing
    # ----------------------------------------------------------------------------------

    def send_request(self, queue: str, request: Request) -> None:
        """Publish ``request`` to worker queue ``queue`` (a short name such as ``"default"``)."""
        if not isinstance(request, Request):
            raise TypeError(f"send_request() takes a Request, got {type(request).__name__}")
        name = names.request_queue(self._ns, queue)
        body = self.codec.encode(request)
        self._publish(body, name, persistent=True, declare=name)

    def send_response(self, reply_to: str, response: Response) -> None:
        """Publish ``response`` to the reply queue ``reply_to`` (taken from the request). A reply
        queue outside this bus's namespace is refused with ``EncodeError``, so a forged request
        cannot make a worker write into another queue."""
        if not isinstance(response, Response):
            raise TypeError(f"send_response() takes a Response, got {type(response).__name__}")
        if not (isinstance(reply_to, str) and reply_to.startswith(self._reply_prefix)):
            raise EncodeError(
                f"reply_to {reply_to!r} is not a reply queue of namespace {self._ns!r}"
            )
        body = self.codec.encode(response)
        self._publish(body, reply_to)

    def broadcast(self, message: Heartbeat | Discover | Cancel) -> None:
        """Publish ``message`` to every subscriber of the control exchange."""
        if not isinstance(message, Heartbeat | Discover | Cancel):
            raise TypeError(f"broadcast() takes a Heartbeat, Discover or Cancel, not {message!r}")
        body = self.codec.encode(message)
        self._publish(body, "", exchange=names.control_exchange(self._ns))

    def _publish(
        self,
        body: bytes,
        routing_key: str,
        *,
        exchange: str = "",
        persistent: bool = False,
        declare: str | None = None,
    ) -> None:
        def publish() -> None:
            if declare is not None and not self._connection.virtual:
                self._declare_request_queue(declare)
            self._connection.producer.publish(
                body,
                routing_key=routing_key,
                exchange=exchange,
                content_type=CONTENT_TYPE,
                content_encoding=CONTENT_ENCODING,
                delivery_mode=2 if persistent else 1,
            )

        self._connection.call("publish", publish)

    def _declare_request_queue(self, name: str) -> None:
        """AMQP: declare a request queue once per connection before publishing to it."""
        if name not in self._declared:
            kombu_request_queue(name)(self._connection.channel("publish")).declare()
            self._declared.add(name)

    # -- queues
    # --------------------------------------------------------------------------------------

    def declare_reply_queue(self, name: str) -> None:
        """Declare reply queue ``name`` (from ``names.reply_queue``). It auto-deletes and expires
        on AMQP; on Redis it exists only while it holds messages. ``close()`` deletes it too."""
        self._check_reply_name(name)
        self._reply_queues.add(name)
        self._connection.call("declare", lambda: self._declare_reply_queue(name))

    def delete_queue(self, name: str) -> None:
        """Stop consuming ``name`` and delete it with whatever its declaration created (on Redis the
        list and kombu's binding keys). Deleting a queue that does not exist is not an error."""
        self._reply_queues.discard(name)
        self._replies.pop(name, None)
        consumer = self._reply_consumers.pop(name, None)
        control = self._control is not None and name == names.control_queue(
            self._ns, self._control[0]
        )
        if control:
            self._control = None
            consumer, self._control_consumer = self._control_consumer, None
        if name in self._requests.queues:
            raise ValueError(f"{name!r} is a request queue this bus consumes; it cannot be deleted")

        def delete() -> None:
            if consumer is not None:
                consumer.cancel()
            self._delete(name, control=control)

        self._connection.call("delete", delete)

    def _delete(self, name: str, *, control: bool = False) -> None:
        channel = self._connection.channel("events")
        if self._connection.virtual:
            channel.queue_purge(name)
        channel.queue_delete(name)
        if control and self.settings.scheme == "memory":
            # kombu's memory transport keeps fanout routing tables in process-wide state.
            channel.queue_unbind(name, names.control_exchange(self._ns), "")

    def _check_reply_name(self, name: str) -> None:
        if not (isinstance(name, str) and name.startswith(self._reply_prefix)):
            raise ValueError(f"{name!r} is not a reply queue name of namespace {self._ns!r}")

    def _declare_reply_queue(self, name: str) -> None:
        self._kombu_reply_queue(name)(self._connection.channel("events")).declare()

    def _kombu_reply_queue(self, name: str) -> Any:
        kombu = load_kombu()
        if self._connection.virtual:
            # No x-expires on Redis: kombu would add a PEXPIRE to every publish and read of it.
            return kombu.Queue(
                name, kombu.Exchange(""), routing_key=name, durable=False, auto_delete=True
            )
        return kombu.Queue(
            name, kombu.Exchange(""), routing_key=name, durable=False, auto_delete=True,
            expires=REPLY_QUEUE_EXPIRES,
        )  # fmt: skip

    # -- consuming
    # -----------------------------------------------------------------------------------

    def consume_requests(
        self, queues: Iterable[str], on_message: OnMessage, *, prefetch: int
    ) -> None:
        """Consume requests from worker queues ``queues`` (short names), taking at most ``prefetch``
        messages until ``set_prefetch()`` says more slots are free. Replaces an earlier call's
        queues."""
        full = [names.request_queue(self._ns, q) for q in queues]
        if not full:
            raise ValueError("consume_requests() needs at least one queue")
        self._requests.consume(full, on_message, prefetch)

    def consume_replies(self, name: str, on_message: OnMessage) -> None:
        """Consume reply queue ``name`` (declaring it if needed)."""
        self._check_reply_name(name)
        self._reply_queues.add(name)
        self._replies[name] = on_message
        self._connection.call("consume", lambda: self._start_replies(name))

    def consume_control(self, subscriber_id: str, on_message: OnMessage) -> None:
        """Receive every control message (heartbeats, discover, cancel) through this subscriber's
        own auto-delete queue. One subscription per bus."""
        names.control_queue(self._ns, subscriber_id)
        if self._control is not None and self._control[0] != subscriber_id:
            raise ValueError("this bus already consumes the control exchange")
        self._control = (subscriber_id, on_message)
        self._connection.call("consume", self._start_control)

    def set_prefetch(self, n: int) -> None:
        """Say how many requests the caller can take now (its free slots); 0 takes nothing."""
        self._requests.set_credit(n)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for messages and call their ``on_message``; once something
        arrived, handle what else is already waiting and return. False if nothing was handled."""
        if not self._connection.connected:
            self.connect()
        requests, connection = self._requests, self._connection
        handled = self._events()
        requests.in_drain = True
        try:
            requests.deliver_held()
            deadline = time.monotonic() + max(0.0, timeout)
            while True:
                if not connection.virtual:
                    connection.call("qos", requests.sync_amqp_credit)
                busy = self._events() - handled
                if busy >= DRAIN_BATCH:
                    break
                wait = 0.0 if busy else max(0.0, deadline - time.monotonic())
                try:
                    connection.call("drain", functools.partial(connection.drain_events, wait))
                except TimeoutError:
                    break
                requests.deliver_held()
        finally:
            requests.in_drain = False
        if not connection.virtual and connection.connected:
            connection.call("qos", requests.sync_amqp_credit)
        return self._events() > handled

    def _events(self) -> int:
        """Deliveries handed to any ``on_message`` so far."""
        return self._handled + self._requests.delivered

    # -- internals: (re)connecting
    # --------------------------------------------------------------------

    def _on_open(self) -> None:
        """Declare the control exchange and re-create every queue and consumer on a new
        connection."""
        kombu = load_kombu()
        self._control_exchange = kombu.Exchange(
            names.control_exchange(self._ns), type="fanout", durable=False, auto_delete=False
        )
        self._control_exchange.declare(channel=self._connection.channel("publish"))
        for name in sorted(self._reply_queues):
            self._declare_reply_queue(name)
        if self._requests.active:
            self._requests.start()
        for name in sorted(self._replies):
            self._start_replies(name)
        if self._control is not None:
            self._start_control()

    def _on_drop(self) -> None:
        self._declared = set()
        self._reply_consumers = {}
        self._control_consumer = None
        self._requests.reset()

    def _start_replies(self, name: str) -> None:
        kombu = load_kombu()
        old = self._reply_consumers.pop(name, None)
        if old is not None:
            old.cancel()

        def on_reply(raw: Any) -> None:
            callback = self._replies.get(name)
            if callback is not None:
                self._handled += 1
                callback(decode_delivery(self.codec, raw.body, name, None))

        consumer = kombu.Consumer(
            self._connection.channel("events"),
            queues=[self._kombu_reply_queue(name)],
            no_ack=True,
            on_message=on_reply,
            accept=[CONTENT_TYPE],
        )
        consumer.consume()
        self._reply_consumers[name] = consumer

    def _start_control(self) -> None:
        kombu = load_kombu()
        assert self._control is not None
        subscriber_id, _ = self._control
        name = names.control_queue(self._ns, subscriber_id)
        if self._control_consumer is not None:
            self._control_consumer.cancel()

        def on_control(raw: Any) -> None:
            if self._control is not None:
                self._handled += 1
                self._control[1](decode_delivery(self.codec, raw.body, name, None))

        queue = kombu.Queue(
            name, self._control_exchange, routing_key="", durable=False, auto_delete=True,
            exclusive=not self._connection.virtual,
        )  # fmt: skip
        channel = self._connection.channel("events")
        self._control_consumer = kombu.Consumer(
            channel, queues=[queue], no_ack=True, on_message=on_control, accept=[CONTENT_TYPE]
        )
        self._control_consumer.consume()
        if self._connection.redis:
            # kombu sends the Redis SUBSCRIBE at the start of the next poll; a broadcast published
            # before that would be missed, so run that step now and return subscribed.
            self._connection.transport.cycle.on_poll_start()
            _forget_redis_binding(channel, name)


def _forget_redis_binding(channel: Any, queue: str) -> None:
    """Remove the entries kombu's Redis transport stored for ``queue``'s binding.

    Binding a queue to the control fanout adds a member to ``_kombu.binding.<exchange>`` (and,
    in kombu versions that have it, ``_kombu.binding_permanent.<exchange>``), which only a clean
    ``queue_delete`` removes: a process killed with SIGKILL would leave them forever. Nothing reads
    them for a fanout exchange: a publish is a Redis ``PUBLISH`` to the exchange's topic, and the
    subscriber maps that topic to its queue in memory (its re-subscribes too). So they go as soon
    as the subscription is made, and no key outlives the process.
    """
    prefixes = [channel.keyprefix_queue]
    permanent = getattr(channel, "keyprefix_binding_permanent", None)
    if permanent:
        prefixes.append(permanent)
    with channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
        for exchange, routing_key, arguments in channel.state.queue_bindings(queue):
            _, pattern, _ = channel.typeof(exchange).prepare_bind(
                queue, exchange, routing_key, arguments
            )
            member = channel.sep.join([routing_key or "", pattern or "", queue])
            for prefix in prefixes:
                pipe.srem(prefix % (exchange,), member)
        pipe.execute()
