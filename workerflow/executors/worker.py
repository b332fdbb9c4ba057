"""WorkerExecutor: run task actions on remote worker daemons over the message bus.

The engine hands each action to :meth:`WorkerExecutor.submit`, which publishes a Request to the
task's worker queue and returns a future. One consumer thread, with a Bus of its own, drains this
executor's reply queue and the control fanout (worker heartbeats), applies each message to the
:class:`~workerflow.executors.remote_requests.RequestTracker`, and between messages checks
deadlines: that thread is the only timer. Publishing goes through a second Bus behind a lock,
because a Bus is not thread-safe and many engines may submit at once.

Every remote fault resolves the future with a Failure of a named error (see
``workerflow.errors``): ``NoWorkerAvailable``, ``RequestTimeout``, ``ExecutionTimeout``,
``WorkerLost``, ``MessageRejected``; a value that cannot be encoded is a ``SerializationError`` and
a broker that stays unreachable an ``ExecutorError``. Nothing hangs and the future never raises.

Imported lazily by :mod:`workerflow.executors`, so a purely local flow never loads kombu.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from concurrent.futures import Future, InvalidStateError
from typing import Any

from proxy import names
from proxy.bus import Bus, Delivery
from proxy.codec import Codec
from proxy.errors import BrokerUnavailable, EncodeError, InvalidMessage, ProxyError
from proxy.messages import Cancel, Discover, Heartbeat, Request, Response
from proxy.settings import BusSettings
from workerflow.errors import ExecutorError, SerializationError
from workerflow.executors.base import Executor, TaskCall
from workerflow.executors.remote_requests import (
    Actions,
    RemoteRequest,
    RequestState,
    RequestTracker,
)
from workerflow.failure import Failure
from workerflow.task import Task

__all__ = ["WorkerExecutor"]

logger = logging.getLogger(__name__)

#: The consumer loop wakes at least this often to check deadlines and the stop flag (seconds).
_TICK = 0.1
#: How long :meth:`WorkerExecutor.stop` waits for the consumer thread (it may be reconnecting).
_JOIN_TIMEOUT = 10.0


class WorkerExecutor(Executor):
    """Runs task actions on worker daemons reached through a broker (Redis, RabbitMQ or memory://).

    A context manager; :meth:`start` and :meth:`stop` are idempotent. One executor may serve many
    engines at once: :meth:`submit` is thread-safe.
    """

    #: The engine dispatches up to this many actions at once; workers' slots are the real limit.
    capacity = 1000

    def __init__(
        self,
        broker_url: str,
        *,
        namespace: str = "workerflow",
        discovery_timeout: float = 5.0,
        request_timeout: float = 60.0,
        heartbeat_timeout: float = 10.0,
        secret: str | bytes | None = None,
        queue: str = "default",
    ) -> None:
        for label, value in (
            ("discovery_timeout", discovery_timeout),
            ("request_timeout", request_timeout),
            ("heartbeat_timeout", heartbeat_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{label} must be a positive number of seconds, not {value!r}")
        if not queue:
            raise ValueError("queue must be a non-empty worker queue name")
        key = secret.encode() if isinstance(secret, str) else secret
        try:
            self.settings = BusSettings.from_url(broker_url, namespace=namespace, secret=key)
        except ProxyError as exc:
            raise ExecutorError(f"cannot use this broker URL: {exc}") from exc
        self.namespace = namespace
        self.discovery_timeout = float(discovery_timeout)
        self.request_timeout = float(request_timeout)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.queue = queue
        self._codec = Codec(
            secret=self.settings.secret, max_message_size=self.settings.max_message_size
        )
        self._tracker = self._new_tracker()
        self._lifecycle = threading.Lock()
        self._publish_lock = threading.Lock()
        self._publish_failed_at = float("-inf")
        self._publisher: Bus | None = None
        self._consumer: Bus | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._started = False
        self._closed = False
        self.executor_id = ""
        self.reply_queue = ""

    def _new_tracker(self) -> RequestTracker:
        return RequestTracker(
            discovery_timeout=self.discovery_timeout,
            request_timeout=self.request_timeout,
            heartbeat_timeout=self.heartbeat_timeout,
        )

    def _new_bus(self) -> Bus:
        """A Bus for this executor's settings (tests override this to inject a fake)."""
        return Bus(self.settings)

    def __repr__(self) -> str:
        state = "running" if self._started else ("stopped" if self._closed else "new")
        return f"<WorkerExecutor {self.executor_id or '-'} namespace={self.namespace!r} {state}>"

    def __enter__(self) -> WorkerExecutor:
        self.start()
        return self

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, declare the reply queue, start the consumer thread and broadcast Discover.

        Raises ExecutorError when the broker stays unreachable past the Bus's retry deadline.
        """
        with self._lifecycle:
            if self._started:
                return
            self.executor_id = uuid.uuid4().hex[:12]
            self.reply_queue = names.reply_queue(self.namespace, self.executor_id)
            self._stopping.clear()
            self._ready.clear()
            self._tracker = self._new_tracker()
            self._publish_failed_at = float("-inf")
            publisher = self._new_bus()
            try:
                publisher.connect()
                self._consumer = self._open_consumer()
            except ProxyError as exc:
                publisher.close()
                raise ExecutorError(
                    f"executor {self.executor_id} cannot reach its broker: {exc}"
                ) from exc
            self._publisher = publisher
            self._thread = threading.Thread(
                target=self._consume, name=f"workerflow-executor-{self.executor_id}", daemon=True
            )
            self._started = True
            self._closed = False
            self._thread.start()
            # Wait (bounded) until the consumer listens, so the workers' answers to Discover and
            # the first replies are not missed.
            self._ready.wait(self.settings.connect_timeout)
            logger.info(
                "worker executor %s started (namespace %r, reply queue %s)",
                self.executor_id, self.namespace, self.reply_queue,
            )  # fmt: skip

    def stop(self) -> None:
        """Fail what is still in flight with ExecutorError, cancel it, delete the reply queue."""
        with self._lifecycle:
            if not self._started:
                return
            self._started = False
            self._closed = True
            self._stopping.set()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                self._wake_consumer()
                thread.join(_JOIN_TIMEOUT)
                if thread.is_alive():
                    logger.warning(
                        "executor %s: consumer thread did not stop within %s s",
                        self.executor_id, _JOIN_TIMEOUT,
                    )  # fmt: skip
            self._thread = None
            reason = f"executor {self.executor_id} stopped while the request was in flight"
            self._carry_out(self._fail_in_flight(reason, cancel=True))
            with self._publish_lock:
                publisher, self._publisher = self._publisher, None
            # A submit racing with stop may have published just before the publisher went away.
            self._carry_out(self._fail_in_flight(reason, cancel=False))
            if publisher is not None:
                with self._publish_lock:
                    for queue in (
                        self.reply_queue,
                        names.control_queue(self.namespace, self.executor_id),
                    ):
                        try:
                            publisher.delete_queue(queue)
                        except ProxyError as exc:
                            logger.warning(
                                "executor %s: could not delete queue %s: %s",
                                self.executor_id, queue, exc,
                            )  # fmt: skip
                    publisher.close()
            logger.info("worker executor %s stopped", self.executor_id)

    def _wake_consumer(self) -> None:
        """Send ourselves a message so the consumer's drain returns now rather than at its tick."""
        wake = Response(request_id="wake", attempt=1, worker_id=self.executor_id, state="running")
        try:
            with self._publish_lock:
                if self._publisher is not None:
                    self._publisher.send_response(self.reply_queue, wake)
        except ProxyError as exc:
            logger.debug("executor %s: could not wake its consumer: %s", self.executor_id, exc)

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, call: TaskCall) -> Future[Any]:
        """Send ``call`` to a worker; the future resolves with its value or a Failure.

        Never raises: a closed executor, an unencodable argument or an unreachable broker resolve
        the future with a Failure too.
        """
        task = call.task
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        request_id = uuid.uuid4().hex
        try:
            if not self._started:
                if self._closed:
                    raise ExecutorError(
                        f"executor {self.executor_id} is stopped; cannot run task {task.name!r}"
                    )
                self.start()
            message = self._build_request(call, request_id)
        except Exception as exc:
            _resolve(future, _as_failure(exc, task.name, request_id))
            return future
        record = RemoteRequest(
            request_id,
            attempt=call.attempt,
            task_name=task.name,
            task_type=task.task_type,
            action=call.action,
            queue=message_queue(task, self.queue),
            future=future,
            progress=call.progress,
            execution_timeout=task.execution_timeout,
        )
        record.message = message
        if self._tracker.add(record, time.monotonic()):
            self._publish(record)
        elif not self._started:
            # stop() ran between our check and add(): nothing would ever time this out.
            if self._tracker.discard(record.id, "executor stopped") is not None:
                error = ExecutorError(f"executor {self.executor_id} stopped: {record.describe()}")
                _resolve(future, Failure.from_exception(error))
        else:
            logger.debug("%s waits for a worker", record.describe())
            self._check_encodable(record)
        return future

    def _build_request(self, call: TaskCall, request_id: str) -> Request:
        task, action, result = call.task, call.action, call.result
        if action not in ("execute", "revert"):
            raise ValueError(f"unknown action {action!r}; expected 'execute' or 'revert'")
        failure = None
        if action == "revert" and isinstance(result, Failure):
            failure, result = result.to_dict(), None
        wall = time.time()
        return Request(
            id=request_id,
            attempt=call.attempt,
            task_type=task.task_type,
            task_name=task.name,
            action=action,
            arguments=dict(call.arguments),
            reply_to=self.reply_queue,
            deadline=wall + self.request_timeout,
            execution_timeout=task.execution_timeout,
            result=result,
            failure=failure,
            flow_failures={name: f.to_dict() for name, f in call.flow_failures.items()},
            sent_at=wall,
        )

    def _publish(self, record: RemoteRequest, *, late: bool = False) -> None:
        """Send a PENDING request; on failure drop it and resolve its future with a Failure."""
        message = record.message
        record.message = None
        if message is None:
            return
        if late:
            # It waited for a worker: its schedule-to-start deadline counts from now.
            wall = time.time()
            message = dataclasses.replace(
                message, deadline=wall + self.request_timeout, sent_at=wall
            )
        waited_since = time.monotonic()
        try:
            with self._publish_lock:
                publisher = self._publisher
                if publisher is None:
                    raise ExecutorError(f"executor {self.executor_id} is stopped")
                if self._publish_failed_at > waited_since:
                    # The publish before ours just spent the whole retry budget: fail fast rather
                    # than queueing behind one full retry deadline per waiting request.
                    raise ExecutorError(
                        f"executor {self.executor_id}: the broker is unreachable (a publish just "
                        "failed after retrying)"
                    )
                try:
                    publisher.send_request(record.queue, message)
                except BrokerUnavailable:
                    self._publish_failed_at = time.monotonic()
                    raise
        except Exception as exc:
            if self._tracker.discard(record.id, f"publish failed: {exc}") is not None:
                _resolve(record.future, _as_failure(exc, record.task_name, record.id))
            return
        logger.debug("%s sent to queue %s", record.describe(), record.queue)

    def _check_encodable(self, record: RemoteRequest) -> None:
        """Fail a WAITING request now if it can never be encoded, instead of at discovery."""
        try:
            if record.message is not None:
                self._codec.encode(record.message)
        except Exception as exc:
            if self._tracker.discard(record.id, f"cannot encode: {exc}") is not None:
                _resolve(record.future, _as_failure(exc, record.task_name, record.id))

    # -- the consumer thread -------------------------------------------------------------------

    def _open_consumer(self) -> Bus:
        bus = self._new_bus()
        try:
            bus.connect()
            bus.declare_reply_queue(self.reply_queue)
            bus.consume_replies(self.reply_queue, self._on_reply)
            bus.consume_control(self.executor_id, self._on_control)
        except BaseException:
            bus.close()
            raise
        return bus

    def _consume(self) -> None:
        """Drain replies and heartbeats, checking deadlines between them, until stopped."""
        try:
            self._listen_then_discover()
            while not self._stopping.is_set():
                try:
                    self._drain_once()
                    self._carry_out(self._tracker.expire(time.monotonic()))
                except Exception:
                    # A bug, not a broker fault (those are handled in _drain_once): keep the
                    # timer alive so every request still settles, and do not spin.
                    logger.exception("executor %s: error in the consumer loop", self.executor_id)
                    self._stopping.wait(_TICK)
        finally:
            self._ready.set()
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.close()

    def _listen_then_discover(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            consumer.drain(0.0)  # subscribes the control queue on transports that do it lazily
        except BrokerUnavailable as exc:
            self._lost_broker(consumer, exc)
            return
        finally:
            self._ready.set()
        self._broadcast(Discover(sender=self.executor_id))

    def _drain_once(self) -> None:
        consumer = self._consumer
        if consumer is None:
            self._reconnect()
            return
        deadline = self._tracker.next_deadline()
        now = time.monotonic()
        timeout = _TICK if deadline is None else min(_TICK, max(0.0, deadline - now))
        try:
            consumer.drain(timeout)
        except BrokerUnavailable as exc:
            self._lost_broker(consumer, exc)
            return
        took = time.monotonic() - now
        if took > timeout + self.heartbeat_timeout / 2:
            # drain() spent that long reconnecting: we heard nobody, which says nothing about them.
            logger.info(
                "executor %s was cut off from the broker for %.1f s; restarting worker clocks",
                self.executor_id, took,
            )  # fmt: skip
            self._tracker.refresh_liveness(time.monotonic())

    def _lost_broker(self, consumer: Bus, exc: BrokerUnavailable) -> None:
        """The Bus gave up reconnecting: fail what is in flight, reconnect from scratch later."""
        logger.error(
            "executor %s lost its broker: %s; failing in-flight requests", self.executor_id, exc
        )
        reason = f"executor {self.executor_id}: the broker became unreachable ({exc})"
        self._carry_out(self._fail_in_flight(reason, cancel=False))
        consumer.close()
        self._consumer = None

    def _reconnect(self) -> None:
        try:
            self._consumer = self._open_consumer()
        except ProxyError as exc:
            logger.warning("executor %s: still cannot reach the broker: %s", self.executor_id, exc)
            self._stopping.wait(_TICK)
            return
        logger.info("executor %s reconnected to its broker", self.executor_id)
        self._listen_then_discover()

    def _on_reply(self, delivery: Delivery) -> None:
        message = delivery.message
        if isinstance(message, Response) and message.worker_id == self.executor_id:
            pass  # our own wake-up call from stop()
        elif isinstance(message, Response):
            self._carry_out(self._tracker.on_response(message, time.monotonic()))
        elif delivery.error is not None:
            logger.warning(
                "executor %s: dropping an invalid reply: %s",
                self.executor_id,
                delivery.error.reason,
            )
        else:
            logger.warning(
                "executor %s: dropping an unexpected %s on its reply queue",
                self.executor_id, type(message).__name__,
            )  # fmt: skip
        delivery.ack()

    def _on_control(self, delivery: Delivery) -> None:
        message = delivery.message
        if isinstance(message, Heartbeat):
            self._carry_out(self._tracker.on_heartbeat(message, time.monotonic()))
        elif delivery.error is not None:
            logger.debug(
                "executor %s: dropping an invalid control message: %s",
                self.executor_id, delivery.error.reason,
            )  # fmt: skip
        # Discover and Cancel from other executors are not for us.
        delivery.ack()

    # -- carrying out the tracker's decisions --------------------------------------------------

    def _carry_out(self, actions: Actions) -> None:
        if not actions:
            return
        for callback, fraction, details in actions.progress:
            try:
                callback(fraction, details)
            except Exception:
                logger.exception("executor %s: progress callback failed", self.executor_id)
        for record in actions.publish:
            self._publish(record, late=True)
        for request_id in actions.cancel:
            self._broadcast(Cancel(request_id=request_id))
        for future, value in actions.settle:
            _resolve(future, value)

    def _fail_in_flight(self, reason: str, *, cancel: bool) -> Actions:
        actions = Actions()
        for record, state in self._tracker.settle_all(reason):
            error = ExecutorError(f"{reason}: {record.describe()}")
            actions.settle.append((record.future, Failure.from_exception(error)))
            # Cancelled running requests still finish on their worker, which then drops the reply
            # instead of recreating the reply queue this executor is about to delete.
            if cancel and state in (RequestState.PENDING, RequestState.RUNNING):
                actions.cancel.append(record.id)
        return actions

    def _broadcast(self, message: Cancel | Discover) -> None:
        try:
            with self._publish_lock:
                if self._publisher is not None:
                    self._publisher.broadcast(message)
        except ProxyError as exc:
            logger.warning(
                "executor %s: could not broadcast %s: %s",
                self.executor_id, type(message).__name__, exc,
            )  # fmt: skip


def message_queue(task: Task, default: str) -> str:
    """The worker queue a task's requests go to: its own ``queue`` or the executor's default."""
    return task.queue or default


def _as_failure(exc: BaseException, task_name: str, request_id: str) -> Failure:
    """Translate an error from publishing into the Failure a user sees (a WorkerflowError)."""
    if isinstance(exc, EncodeError | InvalidMessage):
        error: Exception = SerializationError(
            f"task {task_name!r} (request {request_id}): cannot send the request: {exc}"
        )
    elif isinstance(exc, ProxyError):
        error = ExecutorError(
            f"task {task_name!r} (request {request_id}): cannot publish the request: {exc}"
        )
    elif isinstance(exc, ExecutorError | SerializationError):
        return Failure.from_exception(exc)
    else:
        error = ExecutorError(f"task {task_name!r} (request {request_id}): {exc}")
    error.__cause__ = exc
    return Failure.from_exception(error)


def _resolve(future: Future[Any], value: Any) -> None:
    try:
        future.set_result(value)
    except InvalidStateError:  # already resolved (e.g. settled twice in a race); first one wins
        pass
