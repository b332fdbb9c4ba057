"""Heartbeats and the control channel: a thread with its own Bus that task code cannot starve.

The :class:`Heartbeater` broadcasts a :class:`proxy.messages.Heartbeat` every ``interval`` seconds
on the namespace's control fanout, answers ``Discover`` with an immediate heartbeat, and records
``Cancel`` ids in :class:`CancelledIds` for the consumer loop. It also watches the consumer loop:
if that loop stops ticking for ``stuck_timeout`` seconds (a consumer stuck where even the Bus's
retries cannot help), it stops heartbeating, so engines declare ``WorkerLost``, and calls
``on_stuck``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from proxy.bus import Bus, Delivery
from proxy.errors import ProxyError
from proxy.messages import Cancel, Discover, Heartbeat

__all__ = ["CancelledIds", "Heartbeater"]

log = logging.getLogger(__name__)


class CancelledIds:
    """Request ids cancelled recently, each remembered for ``ttl`` seconds (at most ``limit``)."""

    def __init__(self, ttl: float = 600.0, limit: int = 100_000) -> None:
        self._ttl = ttl
        self._limit = limit
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str) -> None:
        """Remember ``request_id`` as cancelled."""
        now = time.monotonic()
        with self._lock:
            self._ids[request_id] = now + self._ttl
            self._ids.move_to_end(request_id)
            while self._ids and (
                len(self._ids) > self._limit or next(iter(self._ids.values())) < now
            ):
                self._ids.popitem(last=False)

    def __contains__(self, request_id: object) -> bool:
        with self._lock:
            expires = self._ids.get(request_id)  # type: ignore[call-overload]
        return expires is not None and expires >= time.monotonic()

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


class Heartbeater:
    """The heartbeat / control thread; :meth:`start` returns once the first heartbeat is sent."""

    def __init__(
        self,
        bus: Bus,
        worker_id: str,
        make_heartbeat: Callable[[bool], Heartbeat],
        interval: float,
        cancelled: CancelledIds,
        *,
        consumer_tick: Callable[[], float],
        stuck_timeout: float,
        on_stuck: Callable[[], None],
        on_broker_lost: Callable[[BaseException], None],
    ) -> None:
        self._bus = bus
        self._worker_id = worker_id
        self._make_heartbeat = make_heartbeat
        self._interval = interval
        self._cancelled = cancelled
        self._consumer_tick = consumer_tick
        self._stuck_timeout = stuck_timeout
        self._on_stuck = on_stuck
        self._on_broker_lost = on_broker_lost
        self._stop = threading.Event()
        self._final = False
        self._beat_now = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self.sent = 0

    def start(self, timeout: float = 60.0) -> None:
        """Connect, subscribe to control, send the first heartbeat; raise what prevented it."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"no first heartbeat within {timeout} s")
        if self._error is not None:
            raise self._error

    def beat_now(self) -> None:
        """Send a heartbeat soon (free slots or running requests changed noticeably)."""
        self._beat_now = True

    def stop(self, *, final: bool, timeout: float = 10.0) -> None:
        """Stop the thread; with ``final`` it first sends a heartbeat with ``stopping=True``."""
        self._final = final
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._bus.connect()
            self._bus.consume_control(self._worker_id, self._on_control)
            self._beat()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._bus.close()
            return
        self._ready.set()
        try:
            self._loop()
            if self._final:
                self._beat(stopping=True)
        except ProxyError as exc:
            log.error("heartbeat: the broker is unreachable: %s", exc)
            self._on_broker_lost(exc)
        except Exception:
            log.exception("heartbeat thread failed")
            self._on_broker_lost(RuntimeError("heartbeat thread failed"))
        finally:
            self._bus.close()

    def _loop(self) -> None:
        next_beat = time.monotonic() + self._interval
        while not self._stop.is_set():
            now = time.monotonic()
            if self._beat_now or now >= next_beat:
                if self._consumer_stuck(now):
                    return
                self._beat_now = False
                self._beat()
                next_beat = now + self._interval
                continue
            # Bounded drains so stop() and beat_now() take effect within half a second.
            self._bus.drain(min(next_beat - now, 0.5))

    def _consumer_stuck(self, now: float) -> bool:
        silent = now - self._consumer_tick()
        if silent < self._stuck_timeout:
            return False
        log.critical(
            "the consumer loop has not run for %.0f s; stopping heartbeats so engines fail over",
            silent,
        )
        self._on_stuck()
        return True

    def _beat(self, stopping: bool = False) -> None:
        self._bus.broadcast(self._make_heartbeat(stopping))
        self.sent += 1

    def _on_control(self, delivery: Delivery) -> None:
        message = delivery.message
        if isinstance(message, Discover):
            log.debug("discover from %s: heartbeat now", message.sender)
            self._beat_now = True
        elif isinstance(message, Cancel):
            log.info("request %s cancelled", message.request_id)
            self._cancelled.add(message.request_id)
        elif delivery.error is not None:
            log.warning("control message rejected: %s", delivery.error.reason)
        delivery.ack()
