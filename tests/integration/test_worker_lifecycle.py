"""Worker daemon lifecycle against real brokers: scheduling across workers, the process pool,
SIGTERM / SIGINT, an unreachable broker, the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from proxy.messages import Response
from tests.support import (
    ROOT,
    WorkerProcess,
    free_port,
    running_workers,
    stop_gracefully,
    subprocess_env,
)
from worker.testing import Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def task(name: str) -> str:
    return f"tests.remote_tasks:{name}"


def type_names(response: Response) -> list[str]:
    assert response.state == "failure" and response.failure is not None, response
    return list(response.failure["exception_type_names"])


def test_busy_worker_does_not_take_a_second_request(broker_url: str, namespace: str) -> None:
    busy = WorkerProcess(broker_url, namespace, args=["--concurrency", "1"]).wait_ready()
    idle: WorkerProcess | None = None
    client = Client(broker_url, namespace=namespace)
    try:
        slow = client.request(task("Sleep"), {"seconds": 2.5, "steps": 5})
        client.wait(lambda: "running" in client.states(slow), 10, "slow running")
        idle = WorkerProcess(broker_url, namespace, args=["--concurrency", "1"]).wait_ready()
        quick = client.request(task("Add"), {"a": 1, "b": 2})
        quick_done = client.result(quick)
        assert quick_done.result == 3
        slow_done = client.result(slow)
        assert client.order.index(quick_done) < client.order.index(slow_done)
        assert quick_done.worker_id != slow_done.worker_id
        assert str(idle.pid) in quick_done.worker_id and str(busy.pid) in slow_done.worker_id
    finally:
        client.close()
        stop_gracefully(busy, idle)


def test_process_pool_timeout_kills_the_child(redis_url: str, namespace: str) -> None:
    args = ["--concurrency", "1", "--pool", "processes"]
    with running_workers(redis_url, namespace, args=args) as (worker,):
        client = Client(redis_url, namespace=namespace)
        try:
            first = client.result(client.request(task("Pid"))).result
            assert first != worker.pid
            slow = client.request(
                task("Sleep"), {"seconds": 30, "steps": 30}, execution_timeout=0.5
            )
            assert type_names(client.result(slow))[0] == "workerflow.errors.ExecutionTimeout"
            second = client.result(client.request(task("Pid")), 30).result
            assert second not in (first, worker.pid)
            with pytest.raises(ProcessLookupError):
                os.kill(first, 0)
            crash = client.result(client.request(task("ExitProcess"), {"code": 9}), 30)
            assert type_names(crash)[0] == "workerflow.errors.WorkerLost"
            assert client.result(client.request(task("Add"), {"a": 1, "b": 1}), 30).result == 2
        finally:
            client.close()
            stop_gracefully(worker)


def test_sigterm_lets_in_flight_work_finish_and_exits_zero(broker_url: str, namespace: str) -> None:
    worker = WorkerProcess(broker_url, namespace, args=["--concurrency", "1"]).wait_ready()
    client = Client(broker_url, namespace=namespace)
    try:
        slow = client.request(task("Sleep"), {"seconds": 1.5, "steps": 3})
        client.wait(lambda: "running" in client.states(slow), 10, "running")
        worker.signal(signal.SIGTERM)
        assert client.result(slow, 20).result == 1.5
        assert worker.wait_exit(20) == 0

        def stopping() -> bool:
            return any(hb.stopping and hb.pid == worker.pid for _, hb in client.heartbeats)

        client.wait(stopping, 5, "a final heartbeat with stopping=True")
        assert worker.saw("SIGTERM: stopping gracefully")
    finally:
        client.close()
        worker.stop()


def test_grace_period_over_fails_the_request_with_worker_lost(
    redis_url: str, namespace: str
) -> None:
    worker = WorkerProcess(
        redis_url, namespace, args=["--concurrency", "1", "--grace-period", "0.5"]
    ).wait_ready()
    client = Client(redis_url, namespace=namespace)
    try:
        slow = client.request(task("Sleep"), {"seconds": 10, "steps": 10})
        client.wait(lambda: "running" in client.states(slow), 10, "running")
        worker.signal(signal.SIGTERM)
        response = client.result(slow, 10)
        assert type_names(response)[0] == "workerflow.errors.WorkerLost"
        assert "shutting down" in response.failure["message"]  # type: ignore[index]
        assert worker.wait_exit(10) == 0
    finally:
        client.close()
        worker.stop()


def test_second_signal_stops_at_once(redis_url: str, namespace: str) -> None:
    worker = WorkerProcess(redis_url, namespace, args=["--concurrency", "1"]).wait_ready()
    client = Client(redis_url, namespace=namespace)
    try:
        slow = client.request(task("Sleep"), {"seconds": 20, "steps": 20})
        client.wait(lambda: "running" in client.states(slow), 10, "running")
        worker.signal(signal.SIGINT)
        worker.wait_for_line("stopping gracefully")
        worker.signal(signal.SIGTERM)
        response = client.result(slow, 10)
        assert type_names(response)[0] == "workerflow.errors.WorkerLost"
        assert "second signal" in response.failure["message"]  # type: ignore[index]
        assert worker.wait_exit(10) == 0
    finally:
        client.close()
        worker.stop()


def test_unreachable_broker_exits_non_zero(namespace: str) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0?retry_deadline=1"
    worker = WorkerProcess(url, namespace)
    try:
        assert worker.wait_exit(30) == 1
        assert "cannot reach the broker" in worker.output()
        assert "hunter2" not in worker.output()
    finally:
        worker.stop()


def test_cli_help_through_the_entry_point() -> None:
    script = ROOT / ".venv" / "bin" / "workerflow"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "workerflow.cli"]
    result = subprocess.run(
        [*command, "worker", "--help"], capture_output=True, text=True, check=False,
        env=subprocess_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for option in ("--broker", "--queue", "--concurrency", "--pool", "--secret", "--grace-period"):
        assert option in result.stdout


def test_module_that_fails_to_import_is_named(redis_url: str, namespace: str, tmp_path) -> None:
    (tmp_path / "wf_bad_tasks.py").write_text("import no_such_dependency_here\n")
    result = subprocess.run(
        [sys.executable, "-m", "worker", "--broker", redis_url, "wf_bad_tasks"],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=subprocess_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "wf_bad_tasks" in result.stderr and "no_such_dependency_here" in result.stderr


def test_several_queues(redis_url: str, namespace: str) -> None:
    args = ["--concurrency", "1", "--queue", "default", "--queue", "gpu"]
    with running_workers(redis_url, namespace, args=args) as (worker,):
        try:
            with Client(redis_url, namespace=namespace) as client:
                on_gpu = client.request(task("Add"), {"a": 1, "b": 1}, queue="gpu")
                on_default = client.request(task("Add"), {"a": 2, "b": 2})
                assert client.result(on_gpu).result == 2
                assert client.result(on_default).result == 4
                beat = client.wait(lambda: client.heartbeats, 5, "a heartbeat")[-1][1]
                assert beat.queues == ["default", "gpu"]
        finally:
            stop_gracefully(worker)


def test_broker_from_the_environment() -> None:
    env = {**subprocess_env(), "WORKERFLOW_BROKER": "foo://nowhere"}
    result = subprocess.run(
        [sys.executable, "-m", "worker", "tests.remote_tasks"],
        capture_output=True, text=True, check=False, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unsupported broker URL scheme 'foo'" in result.stderr
