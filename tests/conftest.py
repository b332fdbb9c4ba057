"""Shared fixtures. Tests use their own Redis database and a fresh namespace per test, so they never
touch data they did not create; RabbitMQ tests use unique queue and exchange names the same way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support import RedisServer, forget_namespace, port_open

#: The shared Redis, database 13: the suite's own; only keys under a test's namespace are touched.
REDIS_URL = "redis://127.0.0.1:6379/13"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def namespace() -> str:
    """A namespace no other test (or earlier run) uses."""
    return f"wftest-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not port_open(6379):
        pytest.fail("Redis is not listening on 127.0.0.1:6379 (.ci/run starts it)")
    return REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    if not port_open(5672):
        pytest.fail("RabbitMQ is not listening on 127.0.0.1:5672 (.ci/run starts it)")
    return AMQP_URL


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on the real Redis and once on the real RabbitMQ."""
    fixture = "redis_url" if request.param == "redis" else "amqp_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop and restart."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def leave_brokers_clean(request: pytest.FixtureRequest, namespace: str) -> Iterator[None]:
    """After each broker test, delete what it created under its namespace (and nothing else)."""
    yield
    if {"integration", "system"} & set(request.path.parts) and port_open(6379):
        forget_namespace(namespace, REDIS_URL, AMQP_URL)
