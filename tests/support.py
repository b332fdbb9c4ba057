"""Helpers shared by the test suites: waiting on conditions, worker subprocesses, private Redis.

Nothing here sleeps to wait for something: every wait polls a condition until a deadline and fails
with a message saying what it was waiting for.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return it, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def subprocess_env() -> dict[str, str]:
    """Environment for daemons under test: the repo root importable (for tests.* task modules)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """A real ``python -m worker`` subprocess whose log lines are collected as they arrive."""

    def __init__(
        self,
        broker_url: str,
        namespace: str,
        modules: Sequence[str] = ("tests.remote_tasks",),
        *,
        args: Sequence[str] = (),
    ) -> None:
        self.command = [
            sys.executable, "-m", "worker", "--broker", broker_url, "--namespace", namespace,
            "--log-level", "DEBUG", *args, *modules,
        ]  # fmt: skip
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(),
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def saw(self, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self.lines)

    def wait_for_line(self, text: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and not self.saw(text):
                self._reader.join(timeout=2)
                if not self.saw(text):
                    raise AssertionError(
                        f"worker exited with {self.process.returncode} before logging {text!r}:\n"
                        + self.output()
                    )
            return self.saw(text)

        wait_until(seen, timeout, 0.02, f"worker log line {text!r}")

    def wait_ready(self, timeout: float = 15.0) -> WorkerProcess:
        self.wait_for_line("worker ready", timeout)
        return self

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"worker did not exit within {timeout} s:\n{self.output()}"
            ) from exc

    def stop(self) -> None:
        """SIGTERM (a graceful exit), then SIGKILL if the worker has not exited within 5 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(10)
        self._reader.join(timeout=5)


def stop_gracefully(*workers: WorkerProcess | None) -> None:
    """SIGTERM every worker at once, then wait for each to exit."""
    for worker in workers:
        if worker is not None and worker.process.poll() is None:
            worker.signal(signal.SIGTERM)
    for worker in workers:
        if worker is not None:
            worker.wait_exit(30)
            worker.stop()


#: Worker queue names the tests use; their AMQP request queues are durable, so tests delete them.
TEST_QUEUES = ("default", "gpu", "nobody")


def forget_namespace(namespace: str, redis_url: str, amqp_url: str) -> None:
    """Delete what a test created under ``namespace``: Redis keys, AMQP queues and exchange.

    Durable AMQP request queues and the control exchange outlive their workers by design (they are
    the work queues); a test removes its own. Only names holding the namespace are touched.
    """
    import kombu
    import redis

    from proxy import names

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
    if not port_open(5672):
        return
    with kombu.Connection(amqp_url, connect_timeout=2) as connection:
        channel = connection.default_channel
        for queue in TEST_QUEUES:
            channel.queue_delete(names.request_queue(namespace, queue))
        channel.exchange_delete(names.control_exchange(namespace))


@contextmanager
def running_workers(
    broker_url: str, namespace: str, count: int = 1, **kwargs: Any
) -> Iterator[list[WorkerProcess]]:
    """Start ``count`` worker subprocesses, wait until each is ready, kill them all on exit."""
    workers = [WorkerProcess(broker_url, namespace, **kwargs) for _ in range(count)]
    try:
        for w in workers:
            w.wait_ready()
        yield workers
    finally:
        for w in workers:
            w.stop()


class RedisServer:
    """A private redis-server on a free port, for tests that stop or restart the broker."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="wf-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: port_open(self.port), 10, 0.02, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        wait_until(lambda: not port_open(self.port), 10, 0.02, "redis-server to stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
