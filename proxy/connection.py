"""The connection under a bus: one kombu connection, its channels and producer, and the retries.

A lost connection is dropped and re-opened with random exponential backoff (tenacity), capped at
``settings.retry_max_delay``, until ``settings.retry_deadline``; then ``BrokerUnavailable``. The
owner re-creates its queues and consumers in the ``on_open`` hook (run on every successful open)
and forgets the objects of the old connection in ``on_drop``. kombu is imported only when a
connection opens, so importing ``proxy`` stays cheap.
"""

from __future__ import annotations

import importlib
import logging
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar
from urllib.parse import urlsplit

import tenacity

from proxy import names
from proxy.errors import BrokerUnavailable, ProxyError
from proxy.settings import BusSettings

LOG = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a Redis BRPOP blocks server-side before kombu re-issues it (the idle poll period).
REDIS_BRPOP_TIMEOUT = 1
#: How often the in-memory transport polls its queues while waiting.
MEMORY_POLLING_INTERVAL = 0.002


def load_kombu() -> Any:
    """kombu, imported on first use so that importing proxy stays cheap (and untyped, so
    ``Any``)."""
    return importlib.import_module("kombu")


class KeptRedisClient:
    """``conn_or_acquire`` for the publish channel of a kombu Redis connection: one redis-py client
    kept for the channel's life instead of a new one per command.

    kombu's Redis ``Channel._put`` (an ``LPUSH``) and ``_put_fanout`` (a ``PUBLISH``) run their
    command inside ``with self.conn_or_acquire() as client:``, and ``conn_or_acquire()`` without a
    client builds a new ``redis.Redis`` on the channel's connection pool every time (kombu 5.7,
    ``kombu/transport/redis.py``); building it costs more CPU than the command itself. The socket
    comes from that pool either way, so one client kept on the same pool sends the same commands
    over the same connections. Set as an instance attribute, it shadows the method on this channel
    only; a client kombu passes in (as ``close()`` does) is used as given, and kombu's own cached
    ``client`` and ``subclient`` (BRPOP and pub/sub, on the channel's other pool) are untouched. A
    reconnect opens a new channel and so gets a new client; if kombu replaces the pool
    (``_disconnect_pools()`` on close or after a fork), the next call builds a client on the new
    one. Like the bus, it belongs to one thread.
    """

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._client: Any = None

    def __call__(self, client: Any = None) -> AbstractContextManager[Any]:
        if client:
            return nullcontext(client)
        kept = self._client
        if kept is None or kept.connection_pool is not self._channel.pool:
            kept = self._client = self._channel._create_client()
        return nullcontext(kept)


class Connection:
    """One kombu connection with a channel per role and a producer, re-opened on loss.

    ``on_open`` runs after every successful (re)connect, to declare queues and start consumers;
    ``on_drop`` runs whenever the connection is forgotten, to drop what was made on it.
    ``generation`` grows with every drop, so a delivery can tell whether its connection is gone.
    """

    def __init__(
        self,
        settings: BusSettings,
        *,
        on_open: Callable[[], None],
        on_drop: Callable[[], None],
    ) -> None:
        self.settings = settings
        #: Redis and memory are kombu "virtual" transports: no acks on the wire, no basic_qos.
        self.virtual = settings.scheme != "amqp"
        self.redis = settings.scheme in ("redis", "rediss")
        self.generation = 0
        self.closed = False
        self.producer: Any = None
        self.errors: tuple[type[BaseException], ...] = ()
        self._connection: Any = None
        self._channels: dict[str, Any] = {}
        self._on_open = on_open
        self._on_drop = on_drop

    @property
    def connected(self) -> bool:
        """True while a kombu connection is open."""
        return self._connection is not None

    @property
    def transport(self) -> Any:
        """The kombu transport of the open connection."""
        assert self._connection is not None, "the bus is not connected"
        return self._connection.transport

    def connect(self) -> None:
        """Open the connection, retrying with backoff; does nothing if it is open."""
        if self.closed:
            raise ProxyError("this bus is closed; create a new one")
        if self._connection is None:
            self._retrying("connect", self._open, first_error=None)

    def close(self, *, politely: bool) -> None:
        """Refuse further use and forget the connection. ``politely`` closes it on the broker
        first; skip that after an error, so that a dead broker cannot make closing wait."""
        self.closed = True
        try:
            if politely and self._connection is not None:
                self._connection.close()
        except Exception as exc:  # a dead broker must not make close() fail
            LOG.debug("closing the connection to %s: %s", self.settings.safe_url, exc)
        finally:
            self.drop()

    def channel(self, role: str) -> Any:
        """The channel for ``role`` ("publish", "events", "requests"), opened on first use."""
        channel = self._channels.get(role)
        if channel is None:
            assert self._connection is not None, "the bus is not connected"
            channel = self._channels[role] = self._connection.channel()
            if role == "publish" and self.redis:
                channel.conn_or_acquire = KeptRedisClient(channel)
        return channel

    def existing_channel(self, role: str) -> Any:
        """The channel for ``role`` if one is open, else None."""
        return self._channels.get(role)

    def close_channel(self, role: str) -> bool:
        """Close the channel for ``role``; False if none was open."""
        channel = self._channels.pop(role, None)
        if channel is None:
            return False
        channel.close()
        return True

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """Run ``operation``; on connection loss reconnect with backoff and run it again."""
        if self.closed:
            raise ProxyError("this bus is closed")
        if self._connection is None:
            self.connect()
        try:
            return operation()
        except TimeoutError:
            raise
        except self.errors as exc:
            if isinstance(exc, socket.timeout):
                raise
            LOG.warning(
                "connection to %s lost during %s (%s: %s); reconnecting",
                self.settings.safe_url, what, type(exc).__name__, exc,
            )  # fmt: skip

            def again() -> T:
                self.drop()
                self._open()
                return operation()

            return self._retrying(what, again, first_error=exc)

    def drain_events(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the next event and dispatch it to its consumer; raises
        ``TimeoutError`` if nothing came."""
        assert self._connection is not None
        try:
            self._connection.drain_events(timeout=timeout)
        except TimeoutError:
            raise
        except self.errors:
            raise
        except Exception as exc:
            # kombu failed on something it read (e.g. bytes that are not a kombu message at all):
            # the message is gone from the broker; log it and keep the consumer alive.
            LOG.warning("dropped an undecodable broker message: %s: %s", type(exc).__name__, exc)

    def drop(self, connection: Any = None) -> None:
        """Forget the connection and everything made on it, without talking to the broker."""
        connection = connection or self._connection
        self._connection = None
        self._channels = {}
        self.producer = None
        self.generation += 1
        self._on_drop()
        if connection is not None:
            try:
                connection.collect()
            except Exception as exc:
                LOG.debug("releasing a broken connection: %s", exc)

    # -- internals
    # -------------------------------------------------------------------------------------

    def _transport_options(self) -> dict[str, Any]:
        if self.redis:
            namespace = self.settings.namespace
            return {
                "priority_steps": [0],
                "polling_interval": REDIS_BRPOP_TIMEOUT,
                "socket_timeout": max(self.settings.connect_timeout, REDIS_BRPOP_TIMEOUT + 5.0),
                "unacked_key": names.kombu_key(namespace, "unacked"),
                "unacked_index_key": names.kombu_key(namespace, "unacked_index"),
                "unacked_mutex_key": names.kombu_key(namespace, "unacked_mutex"),
                "unacked_restore_throttle": 1_000_000,
            }
        if self.settings.scheme == "memory":
            return {"polling_interval": MEMORY_POLLING_INTERVAL}
        return {}

    def _open(self) -> None:
        kombu = load_kombu()
        connection = kombu.Connection(
            self.settings.url,
            connect_timeout=self.settings.connect_timeout,
            transport_options=self._transport_options(),
            heartbeat=0,
        )
        self.errors = (*connection.connection_errors, OSError)
        try:
            connection.connect()
            self._connection = connection
            self.producer = kombu.Producer(self.channel("publish"), auto_declare=False)
            self._on_open()
        except BaseException:
            self.drop(connection)
            raise
        LOG.debug(
            "bus connected to %s (namespace %s)", self.settings.safe_url, self.settings.namespace
        )

    def _retrying(
        self, what: str, operation: Callable[[], T], *, first_error: BaseException | None
    ) -> T:
        started = time.monotonic()

        def retryable(error: BaseException) -> bool:
            return isinstance(error, self.errors or (OSError,)) and not isinstance(
                error, socket.timeout
            )

        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            LOG.warning(
                "broker %s unavailable (%s: %s); retry %d in %.2f s",
                self.settings.safe_url, type(error).__name__, error, state.attempt_number,
                state.upcoming_sleep,
            )  # fmt: skip

        retrying = tenacity.Retrying(
            stop=tenacity.stop_before_delay(self.settings.retry_deadline),
            wait=tenacity.wait_random_exponential(
                multiplier=0.05, max=self.settings.retry_max_delay
            ),
            retry=tenacity.retry_if_exception(retryable),
            before_sleep=log_retry,
            reraise=False,
        )
        try:
            return retrying(operation)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception() or first_error
            self.drop()
            raise BrokerUnavailable(
                f"broker {self.settings.safe_url} unavailable for "
                f"{time.monotonic() - started:.1f} s (during {what}): "
                f"{self._scrub(f'{type(last).__name__}: {last}')}"
            ) from last

    def _scrub(self, text: str) -> str:
        password = urlsplit(self.settings.url).password
        return text.replace(password, "***") if password else text
