"""The bus against the real brokers: every test runs on Redis and on RabbitMQ (``broker_url``),
in its own namespace; the reconnect and command-count tests use a private redis-server."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import msgpack
import pytest
import redis

from proxy import names
from proxy.bus import Bus, Delivery
from proxy.codec import CONTENT_ENCODING, CONTENT_TYPE
from proxy.errors import BrokerUnavailable, EncodeError
from proxy.messages import Cancel, Discover, Heartbeat, Request, Response
from proxy.settings import BusSettings
from tests.support import ROOT, RedisServer, free_port, subprocess_env, wait_until

BusFactory = Callable[..., Bus]


def make_request(reply_to: str, **arguments: Any) -> Request:
    return Request(
        id=uuid.uuid4().hex, attempt=1, task_type="tests.remote_tasks:Echo", task_name="echo",
        action="execute", arguments=arguments, reply_to=reply_to, deadline=time.time() + 60,
        execution_timeout=None, sent_at=time.time(),
    )  # fmt: skip


def drain_until(buses: list[Bus], predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Drain every bus until ``predicate()`` is truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        for bus in buses:
            bus.drain(0.02)
    return value


def drain_for(buses: list[Bus], seconds: float) -> None:
    """Keep draining for ``seconds`` (to show that something does NOT arrive)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for bus in buses:
            bus.drain(0.02)


@pytest.fixture
def make_bus(broker_url: str, namespace: str) -> Iterator[BusFactory]:
    """Connected buses in the namespace; closed, and what they made removed, at the end."""
    buses: list[Bus] = []

    def make(url: str = broker_url, **options: Any) -> Bus:
        options.setdefault("namespace", namespace)
        options.setdefault("retry_deadline", 5.0)
        bus = Bus(BusSettings.from_url(url, **options))
        bus.connect()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()
    remove_broker_objects(broker_url, namespace)


def remove_broker_objects(url: str, namespace: str) -> None:
    """Delete the request queues and control exchange a test created (RabbitMQ keeps them)."""
    if not url.startswith("amqp"):
        return
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        for queue in ("default", "other"):
            channel.queue_delete(names.request_queue(namespace, queue))
        channel.exchange_delete(names.control_exchange(namespace))


def ready_count(url: str, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting ones delivered and unacked)."""
    if url.startswith("redis"):
        return int(redis.Redis.from_url(url).llen(queue))
    with kombu.Connection(url) as connection:
        return int(connection.channel().queue_declare(queue, passive=True).message_count)


def inject(url: str, queue: str, body: bytes) -> None:
    """Put raw bytes on ``queue`` as a kombu message, the way a foreign or broken sender would."""
    with kombu.Connection(url) as connection:
        if url.startswith("amqp"):
            kombu.Queue(queue, kombu.Exchange(""), routing_key=queue, durable=True)(
                connection.channel()
            ).declare()
        connection.Producer().publish(
            body, routing_key=queue, content_type=CONTENT_TYPE, content_encoding=CONTENT_ENCODING
        )


def test_request_response_round_trip(make_bus: BusFactory, namespace: str) -> None:
    client, worker = make_bus(), make_bus()
    reply_to = names.reply_queue(namespace, "e1")
    client.declare_reply_queue(reply_to)
    replies: list[Delivery] = []
    client.consume_replies(reply_to, replies.append)
    requests: list[Delivery] = []

    def on_request(delivery: Delivery) -> None:
        requests.append(delivery)
        delivery.ack()
        request = delivery.message
        assert isinstance(request, Request)
        worker.send_response(request.reply_to, Response(request.id, 1, "w1", "running"))
        worker.send_response(
            request.reply_to, Response(request.id, 1, "w1", "success", result=request.arguments)
        )

    worker.consume_requests(["default"], on_request, prefetch=1)
    sent = make_request(reply_to, size=(1, 2), blob=b"\x00")
    client.send_request("default", sent)
    drain_until([worker], lambda: requests)
    assert requests[0].message == Request(
        **{**sent.__dict__, "arguments": {"size": [1, 2], "blob": b"\x00"}}
    )
    assert requests[0].queue == names.request_queue(namespace, "default")
    drain_until([client], lambda: len(replies) == 2)
    assert [r.message.state for r in replies if isinstance(r.message, Response)] == [
        "running",
        "success",
    ]
    last = replies[1].message
    assert isinstance(last, Response) and last.result == {"size": [1, 2], "blob": b"\x00"}
    assert not client.drain(0.05)


def test_control_broadcast_reaches_two_subscribers(make_bus: BusFactory) -> None:
    engine, worker_a, worker_b = make_bus(), make_bus(), make_bus()
    seen: dict[str, list[Delivery]] = {"engine": [], "a": [], "b": []}
    engine.consume_control("engine", seen["engine"].append)
    worker_a.consume_control("a", seen["a"].append)
    worker_b.consume_control("b", seen["b"].append)
    buses = [engine, worker_a, worker_b]
    engine.broadcast(Discover("engine"))
    drain_until(buses, lambda: seen["a"] and seen["b"] and seen["engine"])
    assert {d.message for d in seen["a"] + seen["b"]} == {Discover("engine")}
    beat = Heartbeat(
        worker_id="a", hostname="h", pid=1, queues=["default"], task_types=[], concurrency=1,
        free_slots=1, interval=1.0, running=[], version="0",
    )  # fmt: skip
    worker_a.broadcast(beat)
    worker_a.broadcast(Cancel("r1"))
    drain_until(buses, lambda: len(seen["engine"]) == 3 and len(seen["b"]) == 3)
    assert [d.message for d in seen["engine"]] == [Discover("engine"), beat, Cancel("r1")]


def test_signed_messages(make_bus: BusFactory, namespace: str, broker_url: str) -> None:
    worker = make_bus(secret=b"shared")
    got: list[Delivery] = []
    worker.consume_requests(["default"], lambda d: (got.append(d), d.ack()), prefetch=10)
    reply_to = names.reply_queue(namespace, "e1")
    make_bus(secret=b"shared").send_request("default", good := make_request(reply_to))
    make_bus().send_request("default", unsigned := make_request(reply_to))
    make_bus(secret=b"wrong").send_request("default", forged := make_request(reply_to))
    drain_until([worker], lambda: len(got) == 3)
    by_id = {(d.message.id if d.message else d.error.request_id): d for d in got}  # type: ignore[union-attr]
    assert by_id[good.id].message == good
    assert by_id[unsigned.id].error is not None
    assert "unsigned" in by_id[unsigned.id].error.reason  # type: ignore[union-attr]
    assert by_id[forged.id].error is not None
    assert by_id[forged.id].error.reason == "bad signature"  # type: ignore[union-attr]
    assert by_id[forged.id].error.reply_to == reply_to  # type: ignore[union-attr]


def test_garbage_and_wrong_version_are_delivery_errors(
    make_bus: BusFactory, namespace: str, broker_url: str
) -> None:
    worker = make_bus()
    got: list[Delivery] = []
    worker.consume_requests(["default"], lambda d: (got.append(d), d.ack()), prefetch=10)
    queue = names.request_queue(namespace, "default")
    inject(broker_url, queue, b"\xc1\x00garbage")
    body = msgpack.packb({"id": "r9", "reply_to": names.reply_queue(namespace, "e")})
    inject(broker_url, queue, msgpack.packb([99, "request", body, None]))
    if broker_url.startswith("redis"):
        # not even a kombu message: kombu cannot parse it; the bus logs it and goes on
        redis.Redis.from_url(broker_url).lpush(queue, b"\xff not json")
    reply_to = names.reply_queue(namespace, "e1")
    make_bus().send_request("default", good := make_request(reply_to))
    drain_until([worker], lambda: len(got) == 3)
    assert got[0].message is None and got[0].error is not None
    assert "not a msgpack envelope" in got[0].error.reason
    assert got[1].error is not None and "unsupported protocol version 99" in got[1].error.reason
    assert got[2].message == good


def test_oversized_refused_at_sender(make_bus: BusFactory, namespace: str) -> None:
    client = make_bus(max_message_size=10_000)
    with pytest.raises(EncodeError, match="exceeds max_message_size 10000"):
        client.send_request("default", make_request("x.replies.y", blob=b"x" * 20_000))
    with pytest.raises(EncodeError, match="not msgpack-safe"):
        client.send_request("default", make_request("x.replies.y", when=object()))


def test_oversized_rejected_at_receiver(make_bus: BusFactory, namespace: str) -> None:
    worker = make_bus(max_message_size=10_000)
    got: list[Delivery] = []
    worker.consume_requests(["default"], lambda d: (got.append(d), d.ack()), prefetch=10)
    make_bus().send_request(
        "default", make_request(names.reply_queue(namespace, "e"), b=b"x" * 20_000)
    )
    drain_until([worker], lambda: got)
    assert got[0].error is not None and "exceeds max_message_size" in got[0].error.reason


def test_prefetch_pacing(make_bus: BusFactory, namespace: str, broker_url: str) -> None:
    worker, client = make_bus(), make_bus()
    queue = names.request_queue(namespace, "default")
    got: list[Delivery] = []
    worker.consume_requests(["default"], got.append, prefetch=0)
    for _ in range(3):
        client.send_request("default", make_request(names.reply_queue(namespace, "e")))
    drain_for([worker], 0.3)
    assert got == []
    assert ready_count(broker_url, queue) == 3, "with no free slot nothing is taken"

    worker.set_prefetch(1)
    drain_until([worker], lambda: got)
    drain_for([worker], 0.3)
    assert len(got) == 1, "one free slot takes exactly one request"
    assert ready_count(broker_url, queue) == 2

    got[0].ack()
    worker.set_prefetch(2)
    drain_until([worker], lambda: len(got) == 3)
    assert ready_count(broker_url, queue) == 0


def test_set_prefetch_inside_the_callback(make_bus: BusFactory, namespace: str) -> None:
    """The worker's usual pattern: take one, report the slot busy, free it when done."""
    worker, client = make_bus(), make_bus()
    got: list[Delivery] = []

    def on_request(delivery: Delivery) -> None:
        got.append(delivery)
        delivery.ack()
        worker.set_prefetch(0)

    worker.consume_requests(["default"], on_request, prefetch=1)
    for _ in range(2):
        client.send_request("default", make_request(names.reply_queue(namespace, "e")))
    drain_until([worker], lambda: got)
    drain_for([worker], 0.2)
    assert len(got) == 1
    worker.set_prefetch(1)
    drain_until([worker], lambda: len(got) == 2)


def test_redis_keys_cleaned_after_delete_and_close(redis_url: str, namespace: str) -> None:
    settings = BusSettings.from_url(redis_url, namespace=namespace)
    client, worker = Bus(settings), Bus(settings)
    client.connect()
    worker.connect()
    reply_to = names.reply_queue(namespace, "e1")
    client.declare_reply_queue(reply_to)
    client.consume_replies(reply_to, lambda d: None)
    client.consume_control("engine", lambda d: None)
    worker.consume_control("worker", lambda d: None)
    worker.consume_requests(["default"], lambda d: None, prefetch=1)
    r = redis.Redis.from_url(redis_url)
    assert r.keys(f"*{namespace}*") == [], "nothing is stored for consumers or subscriptions"
    worker.send_response(reply_to, Response("r1", 1, "w", "running"))  # left unread
    client.send_request("other", make_request(reply_to))  # nobody consumes "other"
    client.broadcast(Discover("engine"))
    worker.drain(0.1)
    client.drain(0.1)
    client.delete_queue(reply_to)
    client.close()
    worker.close()
    client.close()  # idempotent
    leftover = {k.decode() for k in r.keys(f"*{namespace}*")}
    assert leftover == {names.request_queue(namespace, "other")}, "only the unconsumed request"
    r.delete(names.request_queue(namespace, "other"))


#: A bus that consumes requests, replies and control, run as a subprocess to be SIGKILLed.
SUBSCRIBER = """
import sys
from proxy import names
from proxy.bus import Bus
from proxy.settings import BusSettings

url, namespace = sys.argv[1:3]
bus = Bus(BusSettings.from_url(url, namespace=namespace))
bus.connect()
reply_to = names.reply_queue(namespace, "victim")
bus.declare_reply_queue(reply_to)
bus.consume_replies(reply_to, lambda d: None)
bus.consume_requests(["default"], lambda d: None, prefetch=1)
bus.consume_control("victim", lambda d: print("control", d.message, flush=True))
bus.drain(0.1)  # an empty poll: kombu's one-off unacked sweep (and its mutex key) is over
print("subscribed", flush=True)
while True:
    bus.drain(1.0)
"""


class Script:
    """``python -c code *args`` with the repo importable; its output lines are collected."""

    def __init__(self, code: str, *args: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=ROOT, env=subprocess_env(), text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        if self.process.poll() is not None:
            self._reader.join(timeout=5)
            if not any(text in line for line in self.lines):
                raise AssertionError(f"script exited before printing {text!r}: {self.lines}")
        return any(text in line for line in list(self.lines))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(timeout=5)


def broadcast_until(
    sender: Bus, buses: list[Bus], predicate: Callable[[], Any], timeout: float = 10.0
) -> None:
    """Broadcast ``Discover`` every 0.1 s, draining ``buses``, until ``predicate()`` holds (a
    subscription made on another connection is only certain once something arrived through it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        sender.broadcast(Discover("engine"))
        drain_for(buses, 0.1)


def test_sigkilled_subscriber_leaves_no_redis_key(redis_url: str, namespace: str) -> None:
    """kill -9 of a process consuming requests, replies and control leaves nothing in Redis, and
    the control exchange goes on working for everyone else."""
    settings = BusSettings.from_url(redis_url, namespace=namespace)
    r = redis.Redis.from_url(redis_url)
    victim = Script(SUBSCRIBER, redis_url, namespace)
    try:
        with Bus(settings) as engine, Bus(settings) as observer:
            seen: list[Delivery] = []
            observer.consume_control("observer", seen.append)
            wait_until(lambda: victim.saw("subscribed"), 15, 0.02, "the subscriber script")
            broadcast_until(engine, [observer], lambda: victim.saw("control") and seen)
            assert r.keys(f"*{namespace}*") == [], "a live subscriber stores nothing either"

            victim.kill()
            assert victim.process.returncode == -signal.SIGKILL
            assert r.keys(f"*{namespace}*") == []
            engine.broadcast(Cancel("r1"))
            drain_until([observer], lambda: Cancel("r1") in {d.message for d in seen})
        assert r.keys(f"*{namespace}*") == []
    finally:
        victim.kill()
        for key in r.keys(f"*{namespace}*"):
            r.delete(key)


def test_redis_commands_per_round_trip(private_redis: RedisServer) -> None:
    """Request + running + success, all consumed: 3 LPUSH and 3 BRPOP, nothing else."""
    settings = BusSettings.from_url(private_redis.url, namespace="count")
    client, worker = Bus(settings), Bus(settings)
    client.connect()
    worker.connect()
    reply_to = names.reply_queue("count", "e1")
    client.declare_reply_queue(reply_to)
    replies: list[Delivery] = []
    client.consume_replies(reply_to, replies.append)
    client.consume_control("engine", lambda d: None)
    worker.consume_control("worker", lambda d: None)

    def on_request(delivery: Delivery) -> None:
        request = delivery.message
        assert isinstance(request, Request)
        worker.set_prefetch(0)
        worker.send_response(reply_to, Response(request.id, 1, "w", "running"))
        worker.send_response(reply_to, Response(request.id, 1, "w", "success", result=None))
        worker.set_prefetch(1)

    worker.consume_requests(["default"], on_request, prefetch=1)

    def round_trip() -> None:
        expected = len(replies) + 2
        client.send_request("default", make_request(reply_to))
        drain_until([worker, client], lambda: len(replies) == expected)

    for _ in range(10):
        round_trip()
    r = redis.Redis(port=private_redis.port)

    def calls() -> dict[str, int]:
        return {k: v["calls"] for k, v in r.info("commandstats").items()}

    before = calls()
    n = 200
    for _ in range(n):
        round_trip()
    after = calls()
    used = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    used["cmdstat_info"] -= 1
    used = {k: v for k, v in used.items() if v}
    # A BRPOP that times out while a side waits is re-issued (once per second per idle consumer);
    # allow a handful of those on a slow machine.
    assert used.get("cmdstat_lpush") == 3 * n, used
    assert 3 * n <= used.get("cmdstat_brpop", 0) <= 3 * n + 10, used
    assert set(used) == {"cmdstat_lpush", "cmdstat_brpop"}, used
    client.close()
    worker.close()


def test_redis_publishes_reuse_one_client(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """kombu builds a redis-py client for every publish unless given one; the bus keeps one per
    publish channel, and after a reconnect publishes go through a working new one."""
    built: list[redis.Redis] = []
    init = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)
    settings = BusSettings.from_url(private_redis.url, namespace="reuse", retry_deadline=15)
    reply_to = names.reply_queue("reuse", "e1")
    r = redis.Redis(port=private_redis.port)
    running = Response("r1", 1, "w", "running")
    with Bus(settings) as bus:
        bus.send_response(reply_to, running)
        bus.broadcast(Discover("engine"))
        built.clear()
        for _ in range(20):
            bus.send_response(reply_to, running)
            bus.broadcast(Discover("engine"))
        assert built == [], "no redis-py client is built per publish"
        assert r.llen(reply_to) == 21

        # A quick restart alone is absorbed by redis-py's pool (it replaces a dead socket at
        # checkout); with the server down the publish fails, so the bus drops the connection and
        # opens a new one, with new channels, once the server is back.
        private_redis.stop()
        restart = threading.Timer(0.5, private_redis.start)
        restart.start()
        try:
            bus.send_response(reply_to, running)
        finally:
            restart.join()
        assert "lost during publish" in caplog.text
        built.clear()
        for _ in range(20):
            bus.send_response(reply_to, running)
        assert built == []
        assert r.llen(reply_to) == 21, "the redis-server started empty"
        r.delete(reply_to)


def test_reconnect_after_redis_restart(private_redis: RedisServer) -> None:
    settings = BusSettings.from_url(private_redis.url, namespace="restart", retry_deadline=15)
    client, worker = Bus(settings), Bus(settings)
    client.connect()
    worker.connect()
    reply_to = names.reply_queue("restart", "e1")
    client.declare_reply_queue(reply_to)
    replies: list[Delivery] = []
    client.consume_replies(reply_to, replies.append)
    control: list[Delivery] = []
    worker.consume_control("worker", control.append)

    def on_request(delivery: Delivery) -> None:
        request = delivery.message
        assert isinstance(request, Request)
        worker.send_response(reply_to, Response(request.id, 1, "w", "success"))
        worker.set_prefetch(1)  # the slot is free again

    worker.consume_requests(["default"], on_request, prefetch=1)
    client.send_request("default", make_request(reply_to))
    drain_until([worker, client], lambda: len(replies) == 1)

    private_redis.restart()
    client.send_request("default", make_request(reply_to))  # publish after restart succeeds
    drain_until([worker, client], lambda: len(replies) == 2)
    broadcast_until(client, [worker], lambda: control)  # the control subscription was renewed
    r = redis.Redis(port=private_redis.port)
    assert r.keys("*") == [], "the renewed subscription left no binding keys"
    client.close()
    worker.close()


def test_control_resubscribes_after_its_connection_is_killed(private_redis: RedisServer) -> None:
    settings = BusSettings.from_url(private_redis.url, namespace="resub", retry_deadline=10)
    with Bus(settings) as engine, Bus(settings) as worker:
        seen: list[Delivery] = []
        worker.consume_control("worker", seen.append)
        broadcast_until(engine, [worker], lambda: seen)
        r = redis.Redis(port=private_redis.port)
        assert r.client_kill_filter(_type="pubsub") == 1
        seen.clear()
        broadcast_until(engine, [worker], lambda: seen)
        assert {d.message for d in seen} == {Discover("engine")}
        assert r.keys("*") == []


def test_broker_down_past_the_deadline_raises(private_redis: RedisServer) -> None:
    settings = BusSettings.from_url(
        private_redis.url, namespace="down", retry_deadline=1.0, retry_max_delay=0.2
    )
    bus = Bus(settings)
    bus.connect()
    bus.consume_replies(names.reply_queue("down", "e"), lambda d: None)
    private_redis.stop()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{private_redis.port}"):
        bus.send_request("default", make_request("down.replies.e"))
    assert time.monotonic() - started < 5
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        bus.drain(0.1)
    assert time.monotonic() - started < 5
    bus.close()


def test_connect_failure_hides_the_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    bus = Bus(BusSettings.from_url(url, retry_deadline=0.3, retry_max_delay=0.05))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        bus.connect()
    assert time.monotonic() - started < 3
    assert "s3cret" not in str(info.value)
    assert ":***@127.0.0.1" in str(info.value)
