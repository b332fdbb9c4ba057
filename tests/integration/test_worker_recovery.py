"""A worker whose broker restarts reconnects; one whose broker stays gone exits non-zero.

These tests stop and restart a private redis-server of their own, never the shared one.
"""

from __future__ import annotations

import signal

import pytest

from tests.support import RedisServer, WorkerProcess
from worker.testing import Client

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(90)]

ADD = "tests.remote_tasks:Add"


def test_worker_survives_a_redis_restart(private_redis: RedisServer, namespace: str) -> None:
    url = f"{private_redis.url}?retry_deadline=20"
    worker = WorkerProcess(url, namespace, args=["--concurrency", "1"]).wait_ready()
    try:
        with Client(url, namespace=namespace) as client:
            assert client.result(client.request(ADD, {"a": 1, "b": 2})).result == 3
            private_redis.restart()
            assert client.result(client.request(ADD, {"a": 2, "b": 2}), 25).result == 4
        assert worker.process.poll() is None
        worker.signal(signal.SIGTERM)
        assert worker.wait_exit(30) == 0
    finally:
        worker.stop()


def test_worker_exits_non_zero_when_redis_stays_gone(
    private_redis: RedisServer, namespace: str
) -> None:
    url = f"{private_redis.url}?retry_deadline=2"
    worker = WorkerProcess(url, namespace, args=["--concurrency", "1"]).wait_ready()
    try:
        private_redis.stop()
        assert worker.wait_exit(30) == 1
        assert "broker" in worker.output() and "unavailable" in worker.output()
    finally:
        worker.stop()
