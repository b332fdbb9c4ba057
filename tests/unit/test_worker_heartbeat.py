"""The heartbeat thread with a fake bus: interval, Discover, Cancel, stuck consumer, final beat."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from proxy.messages import Cancel, Discover, Heartbeat
from tests.support import wait_until
from worker.heartbeat import CancelledIds, Heartbeater


class FakeDelivery:
    def __init__(self, message: Any) -> None:
        self.message, self.error = message, None

    def ack(self) -> None:
        pass


class FakeBus:
    """Enough of proxy.bus.Bus for the heartbeat thread; ``inbox`` feeds control messages."""

    def __init__(self) -> None:
        self.sent: list[Heartbeat] = []
        self.inbox: list[Any] = []
        self.lock = threading.Lock()
        self.on_control: Callable[[Any], None] | None = None
        self.closed = False

    def connect(self) -> None:
        pass

    def consume_control(self, subscriber_id: str, on_message: Callable[[Any], None]) -> None:
        self.on_control = on_message

    def broadcast(self, message: Heartbeat) -> None:
        with self.lock:
            self.sent.append(message)

    def drain(self, timeout: float) -> bool:
        with self.lock:
            messages, self.inbox = self.inbox, []
        assert self.on_control is not None
        for message in messages:
            self.on_control(FakeDelivery(message))
        if not messages:
            time.sleep(min(timeout, 0.01))  # a real bus blocks here
        return bool(messages)

    def close(self) -> None:
        self.closed = True


def beat(stopping: bool) -> Heartbeat:
    return Heartbeat("w1", "host", 1, ["default"], [], 1, 1, 0.05, [], "0", stopping=stopping)


def make(bus: FakeBus, tick: Callable[[], float], interval: float = 0.05, **kwargs: Any):
    stuck: list[bool] = []
    lost: list[BaseException] = []
    cancelled = CancelledIds()
    heartbeater = Heartbeater(
        bus,  # type: ignore[arg-type]
        "w1",
        beat,
        interval,
        cancelled,
        consumer_tick=tick,
        stuck_timeout=kwargs.get("stuck_timeout", 60.0),
        on_stuck=lambda: stuck.append(True),
        on_broker_lost=lost.append,
    )
    return heartbeater, cancelled, stuck, lost


def test_beats_at_the_interval_answers_discover_records_cancel_and_says_goodbye() -> None:
    bus = FakeBus()
    heartbeater, cancelled, stuck, lost = make(bus, time.monotonic)
    heartbeater.start()
    assert len(bus.sent) >= 1  # start() returns after the first heartbeat
    wait_until(lambda: len(bus.sent) >= 4, 5, what="heartbeats at the interval")
    with bus.lock:
        bus.inbox += [Cancel(request_id="r1"), Discover(sender="e")]
    wait_until(lambda: "r1" in cancelled, 5, what="the cancel recorded")
    heartbeater.stop(final=True)
    assert bus.sent[-1].stopping and not any(b.stopping for b in bus.sent[:-1])
    assert bus.closed and not stuck and not lost


def test_discover_beats_at_once() -> None:
    bus = FakeBus()
    heartbeater, _, _, _ = make(bus, time.monotonic, interval=30.0)
    heartbeater.start()
    try:
        assert len(bus.sent) == 1
        with bus.lock:
            bus.inbox.append(Discover(sender="e"))
        wait_until(lambda: len(bus.sent) == 2, 2, what="a heartbeat answering discover")
    finally:
        heartbeater.stop(final=False)


def test_a_stuck_consumer_stops_the_heartbeats() -> None:
    bus = FakeBus()
    heartbeater, _, stuck, _ = make(bus, lambda: time.monotonic() - 100, stuck_timeout=10.0)
    heartbeater.start()
    wait_until(lambda: stuck, 5, what="on_stuck")
    count = len(bus.sent)
    heartbeater.stop(final=False)
    assert len(bus.sent) == count and bus.closed
