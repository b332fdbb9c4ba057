"""Notifier: register/deregister, atomic multi-registration, errors dropped, thread safety."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from workerflow.notifier import Notifier


def test_notify_calls_listeners_in_order_with_event_and_details() -> None:
    notifier = Notifier()
    calls: list[tuple[str, str, dict[str, Any]]] = []
    first = lambda e, d: calls.append(("first", e, d))  # noqa: E731
    second = lambda e, d: calls.append(("second", e, d))  # noqa: E731
    notifier.register(first, second)
    notifier.notify("RUNNING", {"task": "t"})
    assert calls == [("first", "RUNNING", {"task": "t"}), ("second", "RUNNING", {"task": "t"})]
    assert len(notifier) == 2 and notifier.is_registered(first)
    notifier.deregister(first)
    notifier.deregister(first)  # not registered: ignored
    assert not notifier.is_registered(first) and len(notifier) == 1


def test_event_filter() -> None:
    notifier = Notifier()
    seen: list[str] = []
    notifier.register(lambda e, d: seen.append(e), events={"SUCCESS"})
    notifier.notify("RUNNING", {})
    notifier.notify("SUCCESS", {})
    assert seen == ["SUCCESS"]


def test_listener_errors_are_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier()
    after: list[str] = []

    def broken(event: str, details: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    notifier.register(broken, lambda e, d: after.append(e))
    notifier.notify("SUCCESS", {"task": "t"})
    assert after == ["SUCCESS"]
    assert "listener bug" in caplog.text


def test_registering_several_rolls_back_when_one_fails() -> None:
    notifier = Notifier()
    a = lambda e, d: None  # noqa: E731
    b = lambda e, d: None  # noqa: E731
    notifier.register(b)
    with pytest.raises(ValueError, match="already registered"):
        notifier.register(a, b)
    assert not notifier.is_registered(a)
    assert notifier.is_registered(b)  # the earlier registration stays
    with pytest.raises(TypeError, match="callable"):
        notifier.register(a, "nope")  # type: ignore[arg-type]
    assert not notifier.is_registered(a)


def test_concurrent_notify_and_register() -> None:
    notifier = Notifier()
    counts = [0]
    lock = threading.Lock()

    def count(event: str, details: dict[str, Any]) -> None:
        with lock:
            counts[0] += 1

    notifier.register(count)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            extra = lambda e, d: None  # noqa: E731
            notifier.register(extra)
            notifier.deregister(extra)

    churner = threading.Thread(target=churn)
    churner.start()

    def send() -> None:
        for _ in range(500):
            notifier.notify("PROGRESS", {})

    senders = [threading.Thread(target=send) for _ in range(4)]
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    stop.set()
    churner.join()
    assert counts[0] == 2000
