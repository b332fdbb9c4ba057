"""Worker: consumes task requests, runs registered tasks in a pool, replies, heartbeats.

Threads and connections (a :class:`proxy.bus.Bus` is not thread-safe, so each has its own):

- the **consumer** thread (the caller of :meth:`Worker.run`, or a background thread after
  :meth:`Worker.start`) owns the consuming Bus: it takes a request only when a slot is free
  (``set_prefetch(free slots)``), validates it and submits it to the pool;
- **pool** slots run the task code and reply through the :class:`~worker.replier.Replier`, a
  second Bus behind a lock, so a result leaves as soon as it exists instead of waiting for the
  consumer thread;
- the **heartbeat** thread owns a third Bus: heartbeats, ``Discover`` and ``Cancel``;
- the **progress** thread flushes coalesced progress.

Stopping (``stop()``, SIGTERM or SIGINT): stop taking requests, let in-flight work finish within
``grace_period``, fail what cannot finish with ``WorkerLost`` ("worker shutting down"), send a last
heartbeat with ``stopping=True``. A second signal skips the grace period. If the broker stays
unreachable past the Bus's retries, the worker stops and :meth:`run` raises :class:`WorkerError`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import FrameType, ModuleType
from typing import Any

from proxy.bus import Bus
from proxy.errors import BrokerUnavailable, ProxyError
from proxy.messages import Heartbeat
from proxy.settings import BusSettings
from worker.dispatcher import Dispatcher
from worker.errors import WorkerError
from worker.heartbeat import CancelledIds, Heartbeater
from worker.pool import Pool, ThreadPool
from worker.process_pool import ProcessPool
from worker.progress import ProgressCoalescer
from worker.registry import Registry
from worker.replier import Replier
from worker.settings import WorkerSettings

__all__ = ["Worker"]

log = logging.getLogger(__name__)

#: Longest blocking drain of the consumer loop: bounds how late it notices stop() or a freed slot.
DRAIN_TIMEOUT = 0.5
#: How often a worker with no free slot still drains (with prefetch 0) to keep its connection alive.
IDLE_DRAIN_INTERVAL = 1.0
#: How long start() waits for the pool, the connections and the first heartbeat.
START_TIMEOUT = 120.0


def _package_version() -> str:
    try:
        return version("workerflow")
    except PackageNotFoundError:
        return "0+unknown"


class Worker:
    """A worker daemon: ``Worker(broker_url, modules, settings)``, then ``run()`` or ``start()``.

    ``modules`` are module names or module objects; every Task subclass and ``@task`` function at
    their top level is registered, and only registered tasks run. Importing happens here, so a
    module that fails to import raises :class:`WorkerError` naming it before anything connects.
    """

    def __init__(
        self,
        broker_url: str,
        modules: Sequence[str | ModuleType],
        settings: WorkerSettings | None = None,
    ) -> None:
        self.settings = settings if settings is not None else WorkerSettings()
        self.bus_settings = BusSettings.from_url(
            broker_url,
            namespace=self.settings.namespace,
            secret=self.settings.secret_bytes,
            max_message_size=self.settings.max_message_size,
        )
        if isinstance(modules, (str, ModuleType)):
            raise TypeError("modules must be a sequence of module names or modules")
        self._module_names = [m.__name__ if isinstance(m, ModuleType) else m for m in modules]
        self.registry = Registry.from_modules(modules)
        self.hostname = socket.gethostname()
        self.worker_id = f"{self.hostname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self._version = _package_version()
        self._task_types = self.registry.task_types

        self._lock = threading.Lock()
        self._cancelled = CancelledIds()
        self._stop_requested = threading.Event()
        self._abort = threading.Event()
        self._slot_freed = threading.Event()
        self._ready = threading.Event()
        self._done = threading.Event()
        self._fatal: BaseException | None = None
        self._last_tick = time.monotonic()
        self._thread: threading.Thread | None = None
        self._hard_exit_when_stuck = False

        self._dispatcher = Dispatcher(
            self.registry,
            self.worker_id,
            self.settings.namespace,
            self._cancelled,
            self._slot_freed.set,
        )
        self._pool: Pool | None = None
        self._replier: Replier | None = None
        self._coalescer: ProgressCoalescer | None = None
        self._heartbeater: Heartbeater | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} {self.bus_settings.safe_url} {self.settings.queues}>"

    # -- public lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Run the worker in a background thread; return once it consumes and has announced itself.

        Raises :class:`WorkerError` if it cannot start (the broker is unreachable, ...). Call
        :meth:`stop` when done: the thread is a daemon, so without it in-flight work is cut off
        at interpreter exit.
        """
        if self._thread is not None:
            raise RuntimeError("this worker was already started")
        # A daemon thread: a caller that forgets stop() must not hang the interpreter at exit.
        self._thread = threading.Thread(
            target=self._serve_quietly, name="worker-consumer", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self._done.is_set() or time.monotonic() > deadline:
                break
        if not self._ready.is_set():
            self.stop()
            raise WorkerError(
                f"worker did not start: {self._fatal or 'timed out'}"
            ) from self._fatal

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully (see the module docstring) and wait for it; safe to call twice."""
        self._request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            limit = timeout if timeout is not None else self.settings.grace_period + 30.0
            thread.join(limit)

    def run(self) -> None:
        """Run in the calling thread until stopped; handles SIGTERM/SIGINT when on the main thread.

        Returns after a graceful stop; raises :class:`WorkerError` when the broker cannot be reached
        or is lost for good, so a CLI exits non-zero and its supervisor restarts it.
        """
        if self._thread is not None:
            raise RuntimeError("this worker was already started")
        self._thread = threading.current_thread()
        restore: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._hard_exit_when_stuck = True
            for signum in (signal.SIGTERM, signal.SIGINT):
                restore[signum] = signal.signal(signum, self._on_signal)
        try:
            self._serve()
        finally:
            for number, handler in restore.items():
                signal.signal(number, handler)
        if self._fatal is not None:
            if isinstance(self._fatal, WorkerError):
                raise self._fatal
            raise WorkerError(str(self._fatal)) from self._fatal

    @property
    def ready(self) -> bool:
        """True once consuming and announced, until stopped."""
        return self._ready.is_set() and not self._done.is_set()

    @property
    def running(self) -> list[str]:
        """Ids of the requests running now."""
        return self._dispatcher.running

    @property
    def free_slots(self) -> int:
        """Slots that can take a request now (0 while stopping)."""
        if self._stop_requested.is_set():
            return 0
        return self._dispatcher.free_slots

    # -- stopping ------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop_requested.is_set():
            log.warning("%s again: stopping at once, failing in-flight requests", name)
            self._abort.set()
        else:
            log.info(
                "%s: stopping gracefully, in-flight requests have %s s to finish "
                "(send it again to stop at once)",
                name,
                self.settings.grace_period,
            )
        self._request_stop()

    def _request_stop(self) -> None:
        self._stop_requested.set()
        self._slot_freed.set()  # wake the consumer loop

    def _broker_lost(self, exc: BaseException) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = exc
        self._abort.set()
        self._request_stop()

    def _consumer_stuck(self) -> None:
        self._broker_lost(WorkerError("the consumer loop is stuck"))
        if self._hard_exit_when_stuck:
            # The thread that would exit cleanly is the stuck one; a supervisor restarts us.
            logging.shutdown()
            os._exit(3)

    # -- the consumer thread -------------------------------------------------------------------

    def _serve_quietly(self) -> None:
        try:
            self._serve()
        except BaseException:  # pragma: no cover - _serve records its errors in _fatal
            log.exception("worker thread failed")

    def _serve(self) -> None:
        consumer = Bus(self.bus_settings)
        try:
            self._setup(consumer)
        except BaseException as exc:
            self._fatal = self._fatal or self._startup_error(exc)
            log.error("worker cannot start: %s", self._fatal)
            self._teardown(consumer, kill=True, final_heartbeat=False)
            self._done.set()
            return
        try:
            self._loop(consumer)
        except ProxyError as exc:
            log.error("consumer: %s", exc)
            self._broker_lost(exc)
        except BaseException as exc:
            log.exception("consumer loop failed")
            self._broker_lost(exc)
        try:
            self._shutdown(consumer)
        finally:
            self._done.set()

    def _startup_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, WorkerError):
            return exc
        if isinstance(exc, BrokerUnavailable):
            return WorkerError(f"cannot reach the broker at {self.bus_settings.safe_url}: {exc}")
        return WorkerError(f"{type(exc).__name__}: {exc}")

    def _setup(self, consumer: Bus) -> None:
        settings = self.settings
        log.info(
            "worker %s starting: broker %s, namespace %s, queues %s, %d %s slots, %d task types",
            self.worker_id,
            self.bus_settings.safe_url,
            settings.namespace,
            ",".join(settings.queues),
            settings.concurrency,
            settings.pool,
            len(self.registry),
        )
        for task_type in self.registry.task_types:
            log.debug("serving %s", task_type)
        publisher = Bus(self.bus_settings)
        publisher.connect()
        self._replier = Replier(publisher, self.worker_id, self._broker_lost, self._cancelled)
        self._coalescer = ProgressCoalescer(self._replier.progress)
        self._coalescer.start()
        self._pool = self._make_pool()
        self._pool.start()
        self._dispatcher.attach(self._pool, self._replier, self._coalescer)
        consumer.connect()
        consumer.consume_requests(
            list(settings.queues), self._dispatcher.on_delivery, prefetch=self._pool.free_slots
        )
        self._last_tick = time.monotonic()
        self._heartbeater = Heartbeater(
            Bus(self.bus_settings),
            self.worker_id,
            self._heartbeat,
            settings.heartbeat_interval,
            self._cancelled,
            consumer_tick=lambda: self._last_tick,
            stuck_timeout=self.bus_settings.retry_deadline + 4 * DRAIN_TIMEOUT + 15.0,
            on_stuck=self._consumer_stuck,
            on_broker_lost=self._broker_lost,
        )
        self._heartbeater.start()
        log.info(
            "worker ready: %s consuming %s (heartbeat every %s s)",
            self.worker_id,
            ", ".join(settings.queues),
            settings.heartbeat_interval,
        )
        self._ready.set()

    def _make_pool(self) -> Pool:
        if self.settings.pool == "processes":
            root = logging.getLogger()
            return ProcessPool(
                self._module_names,
                self.settings.concurrency,
                self._dispatcher,
                log_level=root.getEffectiveLevel() if root.handlers else None,
            )
        return ThreadPool(self.registry, self.settings.concurrency, self._dispatcher)

    def _loop(self, consumer: Bus) -> None:
        while not self._stop_requested.is_set():
            self._last_tick = time.monotonic()
            self._slot_freed.clear()
            self._dispatcher.start_held()
            free = self.free_slots
            # Every turn, not only on change: the bus spends one credit per delivery by itself.
            consumer.set_prefetch(free)
            if free > 0:
                consumer.drain(DRAIN_TIMEOUT)
            elif not self._slot_freed.wait(IDLE_DRAIN_INTERVAL):
                # No free slot: take nothing, but keep the connection serviced.
                consumer.drain(0)

    def _heartbeat(self, stopping: bool) -> Heartbeat:
        return Heartbeat(
            worker_id=self.worker_id,
            hostname=self.hostname,
            pid=os.getpid(),
            queues=list(self.settings.queues),
            task_types=self._task_types,
            concurrency=self.settings.concurrency,
            free_slots=0 if stopping else self.free_slots,
            interval=self.settings.heartbeat_interval,
            running=self.running,
            version=self._version,
            stopping=stopping,
            sent_at=time.time(),
        )

    # -- shutdown ------------------------------------------------------------------------------

    def _shutdown(self, consumer: Bus) -> None:
        consumer.close()  # take nothing more; on AMQP unacked deliveries go back to the queue
        graceful = self._fatal is None
        finished = self._pool is None or self._wait_in_flight()
        if self._replier is not None and graceful and not finished:
            if self._abort.is_set():
                self._dispatcher.fail_unfinished("worker stopped at once by a second signal")
            else:
                self._dispatcher.fail_unfinished(
                    f"worker shutting down: grace period of {self.settings.grace_period} s over"
                )
        self._teardown(consumer, kill=not finished, final_heartbeat=graceful)
        if graceful:
            log.info("worker %s stopped", self.worker_id)
        else:
            log.error("worker %s stopped: %s", self.worker_id, self._fatal)

    def _wait_in_flight(self) -> bool:
        """Let running requests finish within the grace period; True if none is left.

        Waits for requests, not threads: a thread still running a task that already timed out
        (its request answered) does not hold the shutdown up.
        """
        assert self._pool is not None
        dispatcher = self._dispatcher
        if self._abort.is_set() or self._fatal is not None:
            return dispatcher.idle
        running = dispatcher.running
        if running:
            log.info(
                "waiting up to %s s for %d running requests: %s",
                self.settings.grace_period,
                len(running),
                ", ".join(running),
            )
        deadline = time.monotonic() + self.settings.grace_period
        while not self._abort.is_set():
            self._last_tick = time.monotonic()
            if dispatcher.idle:
                return True
            if time.monotonic() >= deadline:
                return False
            # Returns as soon as every slot is idle; else polls while a timed-out thread runs on.
            self._pool.join(min(0.1, max(0.0, deadline - time.monotonic())))
        return False

    def _teardown(self, consumer: Bus, *, kill: bool, final_heartbeat: bool) -> None:
        consumer.close()
        if self._pool is not None:
            self._pool.close(kill=kill)
        if self._coalescer is not None:
            self._coalescer.close()
        if self._heartbeater is not None:
            self._heartbeater.stop(final=final_heartbeat)
        if self._replier is not None:
            self._replier.close()
