"""Worker.start()/stop() in-process on kombu's memory:// transport (the zero-setup demo path)."""

from __future__ import annotations

import uuid

import pytest

from tests import remote_tasks
from worker import Worker, WorkerError, WorkerSettings
from worker.testing import Client


def test_start_serves_requests_and_stop_is_graceful_and_idempotent() -> None:
    namespace = f"wfmem-{uuid.uuid4().hex[:10]}"
    settings = WorkerSettings(namespace=namespace, concurrency=2, heartbeat_interval=0.2)
    worker = Worker("memory://", [remote_tasks], settings)
    worker.start()
    try:
        assert worker.ready and worker.free_slots == 2
        with Client("memory://", namespace=namespace) as client:
            request = client.request("tests.remote_tasks:multiply", {"a": 6, "b": 7})
            response = client.result(request, 10)
            assert client.states(request) == ["running", "success"]
            assert response.result == 42 and response.worker_id == worker.worker_id
            flood = client.request("tests.remote_tasks:ProgressFlood", {"count": 50_000})
            assert client.result(flood, 20).result == 50_000
            worker.stop()
            worker.stop()
            assert not worker.ready
            client.wait(lambda: any(b.stopping for _, b in client.heartbeats), 5, "last beat")
    finally:
        worker.stop()


def test_start_raises_when_the_broker_cannot_be_reached() -> None:
    worker = Worker(
        "redis://:hunter2@127.0.0.1:1/0?retry_deadline=0.5&connect_timeout=0.2",
        ["tests.remote_tasks"],
        WorkerSettings(namespace="wfunreachable", concurrency=1),
    )
    with pytest.raises(WorkerError, match="cannot reach the broker") as info:
        worker.start(timeout=30)
    assert "hunter2" not in str(info.value)


def test_bad_modules_argument() -> None:
    with pytest.raises(TypeError):
        Worker("memory://", "tests.remote_tasks")  # type: ignore[arg-type]
    with pytest.raises(WorkerError, match="no_such_module"):
        Worker("memory://", ["no_such_module"])
