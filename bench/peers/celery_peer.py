"""Celery 5.7 as a benchmark peer: a no-op task on a prefork worker, Redis broker and backend.

The app is built by :func:`make_app` (no module-level app): the client and the worker build the
same one from the same arguments. Settings are Celery's defaults except where a benchmark needs
otherwise, each said below:

- json for tasks and results (Celery's default serializer, named explicitly);
- every Redis key carries ``<prefix>:`` (kombu's and the result backend's ``global_keyprefix``), so
  a run deletes exactly the keys it created;
- the worker runs ``--without-gossip --without-mingle --without-heartbeat``, the usual production
  flags for a worker that does not need event-based monitoring; they only remove background
  traffic, not per-task work. Its log level is Celery's default (WARNING: no line per task).

Worker: ``python -m bench.peers.celery_peer --broker URL --prefix P --queue Q --concurrency 2``;
it prints ``worker ready`` (from the ``worker_ready`` signal) when it takes tasks.
"""

from __future__ import annotations

import argparse
import sys
from time import perf_counter
from typing import Any

from celery import Celery
from celery.result import AsyncResult, ResultSet
from celery.signals import worker_ready

from bench.common import BenchConfig, Daemon

TASK_NAME = "bench.noop"


def make_app(broker_url: str, prefix: str, queue: str) -> Celery:
    """A Celery app with one no-op task named ``bench.noop`` routed to ``queue``."""
    app = Celery(f"bench-{prefix}", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        result_backend=broker_url,
        broker_transport_options={"global_keyprefix": f"{prefix}:"},
        result_backend_transport_options={"global_keyprefix": f"{prefix}:"},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        worker_hijack_root_logger=True,
    )

    @app.task(name=TASK_NAME)
    def noop() -> None:
        return None

    return app


class CelerySystem:
    """One prefork worker with ``slots`` pool processes; the client calls ``delay()``, ``get()``."""

    name = "celery"

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.prefix = f"bench-{config.run}-celery"
        self.queue = f"{self.prefix}-tasks"
        self.app = make_app(config.broker_url, self.prefix, self.queue)
        self.task: Any = self.app.tasks[TASK_NAME]
        self.worker: Daemon | None = None

    def start(self) -> None:
        self.worker = Daemon(
            [sys.executable, "-m", "bench.peers.celery_peer", "--broker", self.config.broker_url,
             "--prefix", self.prefix, "--queue", self.queue,
             "--concurrency", str(self.config.slots)],
            self.config.log_dir, "celery-worker",
        )  # fmt: skip
        self.worker.wait_ready("worker ready", timeout=60)

    def pids(self) -> list[int]:
        return [self.worker.pid] if self.worker else []

    def run_batch(self, tasks: int, timeout: float) -> None:
        results = [self.task.delay() for _ in range(tasks)]
        # Result keys are left to the cleanup at close(): forget() would add a DEL per task.
        ResultSet(results, app=self.app).get(timeout=timeout)

    def round_trips(self, tasks: int, timeout: float) -> list[float]:
        durations = []
        for _ in range(tasks):
            started = perf_counter()
            result: AsyncResult = self.task.delay()
            result.get(timeout=timeout)
            durations.append(perf_counter() - started)
        return durations

    def key_patterns(self) -> list[str]:
        return [f"{self.prefix}:*"]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A Celery prefork worker for the benchmarks.")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    app = make_app(args.broker, args.prefix, args.queue)

    def announce(**_: Any) -> None:
        print("worker ready", flush=True)

    worker_ready.connect(announce, weak=False)
    app.worker_main(
        ["worker", "--pool=prefork", f"--concurrency={args.concurrency}",
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-Q", args.queue, "-n", f"{args.prefix}@%h"]
    )  # fmt: skip


if __name__ == "__main__":
    main()
