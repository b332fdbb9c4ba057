"""Dramatiq 2.2 as a benchmark peer: a no-op actor on a threaded worker, Redis broker and results.

The broker is built by :func:`make_broker` (no module-level broker): the client and the worker build
the same one from the same arguments. Settings are Dramatiq's defaults except where a benchmark
needs otherwise, each said below:

- the Results middleware on a Redis backend (the actor has ``store_results=True``), so the client
  can wait for each result as it does for the other systems; Dramatiq's default middleware
  otherwise (age and time limits, retries, callbacks, pipelines, shutdown notifications);
- every Redis key carries ``<prefix>:`` (the broker's ``namespace``) or ``<prefix>-results:`` (the
  backend's, with ``use_namespace_prefix_keys=True``: by default result keys are bare md5 hashes),
  so a run deletes exactly the keys it created;
- the worker is Dramatiq's own CLI with ``--processes 1 --threads <slots>``: one worker process
  with as many worker threads as the other systems have slots (Dramatiq's defaults are 2 processes
  x 8 threads). One process with threads is Dramatiq's own model and matches the workerflow worker
  (one process, a thread per slot); its log level is the CLI's default (INFO: no line per task).

Worker: ``python -m bench.peers.dramatiq_peer --broker URL --prefix P --queue Q --threads 2``; it
hands over to ``dramatiq.cli.main`` (which logs ``Worker process is ready for action.`` when its
worker process takes tasks), passing the arguments to the forked worker in the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from time import perf_counter
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.common import BenchConfig, Daemon

ACTOR_NAME = "bench_noop"
_ENV = {"broker": "BENCH_DRAMATIQ_BROKER", "prefix": "BENCH_DRAMATIQ_PREFIX",
        "queue": "BENCH_DRAMATIQ_QUEUE"}  # fmt: skip
READY = "Worker process is ready for action."


def noop() -> None:
    return None


def make_broker(broker_url: str, prefix: str, queue: str) -> tuple[RedisBroker, RedisBackend, Any]:
    """A Redis broker with a Redis Results backend and one no-op actor on ``queue``."""
    backend = RedisBackend(
        url=broker_url, namespace=f"{prefix}-results", use_namespace_prefix_keys=True
    )
    broker = RedisBroker(url=broker_url, namespace=prefix)
    broker.add_middleware(Results(backend=backend))
    actor = dramatiq.actor(
        noop, actor_name=ACTOR_NAME, queue_name=queue, broker=broker, store_results=True
    )
    return broker, backend, actor


def setup_from_environment() -> None:
    """The ``broker`` callable the Dramatiq CLI imports: builds the broker and makes it global."""
    broker, _backend, _actor = make_broker(*(os.environ[_ENV[key]] for key in _ENV))
    dramatiq.set_broker(broker)


class DramatiqSystem:
    """One Dramatiq worker process with ``slots`` threads; the client ``send()``s, gets results."""

    name = "dramatiq"

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.prefix = f"bench-{config.run}-dramatiq"
        self.queue = f"{self.prefix}-tasks"
        self.broker, self.backend, self.actor = make_broker(
            config.broker_url, self.prefix, self.queue
        )
        self.worker: Daemon | None = None

    def start(self) -> None:
        self.worker = Daemon(
            [sys.executable, "-m", "bench.peers.dramatiq_peer", "--broker", self.config.broker_url,
             "--prefix", self.prefix, "--queue", self.queue, "--threads", str(self.config.slots)],
            self.config.log_dir, "dramatiq-worker",
        )  # fmt: skip
        self.worker.wait_ready(READY, timeout=60)

    def pids(self) -> list[int]:
        return [self.worker.pid] if self.worker else []

    def _wait(self, message: Any, deadline: float) -> None:
        # The Redis backend blocks in whole seconds (BRPOPLPUSH); at least 1 s per call.
        remaining_ms = max(1000, int(1000 * (deadline - time.monotonic())))
        self.backend.get_result(message, block=True, timeout=remaining_ms)

    def run_batch(self, tasks: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        messages = [self.actor.send() for _ in range(tasks)]
        # Result keys are left to the cleanup at close(), as for Celery.
        for message in messages:
            self._wait(message, deadline)

    def round_trips(self, tasks: int, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        durations = []
        for _ in range(tasks):
            started = perf_counter()
            self._wait(self.actor.send(), deadline)
            durations.append(perf_counter() - started)
        return durations

    def key_patterns(self) -> list[str]:
        return [f"{self.prefix}:*", f"{self.prefix}-results:*"]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.broker.close()  # a no-op for Redis: the clients' pools are closed here
        self.broker.client.close()
        self.backend.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A Dramatiq worker for the benchmarks.")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.update({_ENV["broker"]: args.broker, _ENV["prefix"]: args.prefix,
                       _ENV["queue"]: args.queue})  # fmt: skip
    from dramatiq import cli

    cli_args = cli.make_argument_parser().parse_args(
        ["bench.peers.dramatiq_peer:setup_from_environment",
         "--processes", "1", "--threads", str(args.threads), "--queues", args.queue]
    )  # fmt: skip
    sys.exit(cli.main(cli_args))


if __name__ == "__main__":
    main()
