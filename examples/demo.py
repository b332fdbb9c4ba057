"""The quick-start demo: run a real flow on worker processes this script starts itself.

Broker: ``--broker`` or ``WORKERFLOW_BROKER`` if given; else the Redis on localhost if it
answers; else kombu's in-memory transport with in-process workers. It says which, shows remote
progress, then runs the flow again with a broken network step so you can watch every finished step
being reverted. It stops every process it started and leaves no keys behind.

    python examples/demo.py [--broker URL]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.tasks import BootServer, ConfigureNetwork, CreateVolume, attach  # noqa: E402
from workerflow import Engine, GraphFlow, LinearFlow  # noqa: E402
from workerflow.executors import WorkerExecutor  # noqa: E402

LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def choose_broker(given: str | None) -> tuple[str, str]:
    if given:
        return given, "the broker you gave"
    if redis_answers():
        return LOCAL_REDIS, "the Redis on localhost"
    return "memory://", "kombu's in-memory transport (no Redis answered on localhost:6379)"


@contextmanager
def worker_processes(broker: str, namespace: str, count: int) -> Iterator[None]:
    """Start ``count`` `python -m worker` daemons and wait until each says it is ready."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "worker", "--broker", broker, "--namespace", namespace,
               "--concurrency", "2", "examples.tasks"]  # fmt: skip
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(count)
    ]
    ready = [threading.Event() for _ in procs]

    def follow(proc: subprocess.Popen[str], event: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "worker ready" in line:
                event.set()
            if any(word in line for word in ("deleting", "ERROR", "revert")):
                print(f"    [worker {proc.pid}] {line.rstrip()}")

    for proc, event in zip(procs, ready, strict=True):
        threading.Thread(target=follow, args=(proc, event), daemon=True).start()
    try:
        for proc, event in zip(procs, ready, strict=True):
            if not event.wait(20):
                raise SystemExit(f"worker {proc.pid} did not become ready within 20 s")
        print(f"started {count} worker processes: {', '.join(str(p.pid) for p in procs)}")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def in_process_workers(broker: str, namespace: str, count: int) -> Iterator[None]:
    from worker import Worker, WorkerSettings

    # Show the tasks' own log lines (the reverts) as the subprocess workers' are shown.
    logging.basicConfig(level=logging.WARNING, format="    [in-process worker] %(message)s")
    logging.getLogger("examples.tasks").setLevel(logging.INFO)
    workers = [
        Worker(broker, ["examples.tasks"], WorkerSettings(namespace=namespace, concurrency=2))
        for _ in range(count)
    ]
    for w in workers:
        w.start()
    print(f"started {count} in-process workers")
    try:
        yield
    finally:
        for w in workers:
            w.stop()


def build_flow() -> GraphFlow:
    # volume and server are independent (they run in parallel); attach and network follow.
    return GraphFlow("provision").add(
        CreateVolume(), BootServer(), attach, LinearFlow("network").add(ConfigureNetwork())
    )


def show(event: str, details: dict[str, Any]) -> None:
    if event == "PROGRESS":
        print(f"  {details['task']:<18} progress {details['progress']:.0%}")
    else:
        print(f"  {details['task']:<18} {event}")


def run_once(executor: WorkerExecutor, network: str) -> None:
    store = {"size_gb": 10, "image": "debian-12", "network": network}
    engine = Engine(build_flow(), store=store, executor=executor)
    engine.atom_notifier.register(show)
    started = time.perf_counter()
    try:
        engine.run()
    except Exception as exc:
        print(f"flow reverted and re-raised the original error: {type(exc).__name__}: {exc}")
    else:
        print(f"flow succeeded: {engine.storage.fetch_all()}")
    print(f"  ({time.perf_counter() - started:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("WORKERFLOW_BROKER"))
    args = parser.parse_args()
    broker, why = choose_broker(args.broker)
    namespace = f"demo-{uuid.uuid4().hex[:8]}"
    print(f"broker: {why} ({broker}), namespace {namespace}")
    workers = in_process_workers if broker.startswith("memory://") else worker_processes
    with workers(broker, namespace, 2), WorkerExecutor(broker, namespace=namespace) as executor:
        print("\n1) provisioning, every step on a worker:")
        run_once(executor, network="office")
        print("\n2) the same flow with a broken network step:")
        run_once(executor, network="broken")
    print("\nall workers stopped; reply queues deleted.")


if __name__ == "__main__":
    main()
