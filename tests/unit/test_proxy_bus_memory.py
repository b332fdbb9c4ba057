"""The bus on kombu's in-memory transport: fast, in-process, no broker. kombu's memory transport
keeps process-wide state, so every test uses its own namespace."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from proxy import names
from proxy.bus import Bus, Delivery
from proxy.errors import EncodeError, ProxyError
from proxy.messages import Cancel, Discover, Request, Response
from proxy.settings import BusSettings
from tests.support import ROOT


@pytest.fixture
def make_bus(namespace: str) -> Iterator[Callable[..., Bus]]:
    buses: list[Bus] = []

    def make(**options: Any) -> Bus:
        bus = Bus(BusSettings.from_url("memory://", namespace=namespace, **options))
        bus.connect()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


def make_request(reply_to: str) -> Request:
    return Request(
        id=uuid.uuid4().hex, attempt=1, task_type="m:T", task_name="t", action="execute",
        arguments={}, reply_to=reply_to, deadline=time.time() + 60, execution_timeout=None,
    )  # fmt: skip


def drain_until(buses: list[Bus], predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        for bus in buses:
            bus.drain(0.01)


def test_round_trip(make_bus: Callable[..., Bus], namespace: str) -> None:
    client, worker = make_bus(), make_bus()
    reply_to = names.reply_queue(namespace, "e")
    client.declare_reply_queue(reply_to)
    replies: list[Delivery] = []
    client.consume_replies(reply_to, replies.append)

    def on_request(delivery: Delivery) -> None:
        assert isinstance(delivery.message, Request)
        worker.send_response(reply_to, Response(delivery.message.id, 1, "w", "success", result=7))

    worker.consume_requests(["default"], on_request, prefetch=1)
    client.send_request("default", request := make_request(reply_to))
    drain_until([worker, client], lambda: replies)
    assert replies[0].message == Response(request.id, 1, "w", "success", result=7)
    assert replies[0].queue == reply_to


def test_control_fanout_on_memory(make_bus: Callable[..., Bus]) -> None:
    a, b = make_bus(), make_bus()
    seen_a: list[Delivery] = []
    seen_b: list[Delivery] = []
    a.consume_control("a", seen_a.append)
    b.consume_control("b", seen_b.append)
    a.broadcast(Cancel("r1"))
    drain_until([a, b], lambda: seen_a and seen_b)
    assert seen_a[0].message == seen_b[0].message == Cancel("r1")
    b.close()
    a.broadcast(Discover("a"))  # a closed subscriber is unbound, not fed forever
    drain_until([a], lambda: len(seen_a) == 2)


def test_prefetch_pacing(make_bus: Callable[..., Bus], namespace: str) -> None:
    client, worker = make_bus(), make_bus()
    got: list[Delivery] = []
    worker.consume_requests(["default"], got.append, prefetch=0)
    for _ in range(3):
        client.send_request("default", make_request(names.reply_queue(namespace, "e")))
    assert not worker.drain(0.05)
    worker.set_prefetch(1)
    drain_until([worker], lambda: got)
    assert not worker.drain(0.05)
    assert len(got) == 1
    worker.set_prefetch(5)
    drain_until([worker], lambda: len(got) == 3)


def test_signed_bus_rejects_unsigned(make_bus: Callable[..., Bus], namespace: str) -> None:
    worker = make_bus(secret=b"k")
    got: list[Delivery] = []
    worker.consume_requests(["default"], got.append, prefetch=5)
    make_bus().send_request("default", request := make_request(names.reply_queue(namespace, "e")))
    drain_until([worker], lambda: got)
    assert got[0].message is None and got[0].error is not None
    assert got[0].error.request_id == request.id
    got[0].ack()  # a no-op without acks, but always safe to call


def test_send_response_refuses_foreign_queue(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    with pytest.raises(EncodeError, match="not a reply queue"):
        bus.send_response("other.requests.default", Response("r", 1, "w", "running"))
    with pytest.raises(ValueError, match="prefetch"):
        bus.set_prefetch(-1)


def test_closed_bus_refuses_work(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.close()
    bus.close()
    with pytest.raises(ProxyError, match="closed"):
        bus.broadcast(Discover("x"))
    with pytest.raises(ProxyError, match="closed"):
        bus.connect()


def test_importing_proxy_does_not_import_kombu() -> None:
    code = (
        "import sys, proxy.bus, proxy.codec, proxy.settings, proxy.names; "
        "assert 'kombu' not in sys.modules, 'kombu imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
