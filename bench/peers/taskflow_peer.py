"""OpenStack TaskFlow 6.5's worker-based engine as a benchmark peer, over kombu's Redis transport.

One TaskFlow worker process (``taskflow.engines.worker_based.worker.Worker``) with a thread pool
of ``slots`` threads serves a no-op task, as a workerflow worker with ``--concurrency`` slots does.
The client keeps one ``WorkerTaskExecutor`` for the whole run (waiting once for the worker to
announce itself) and runs a fresh engine per window on it:

- throughput: an unordered flow of N no-op tasks;
- latency: a linear flow of N no-op tasks; a round trip is the time from a task's RUNNING to its
  SUCCESS notification on ``engine.atom_notifier``, i.e. request sent to result received.

The first task of every engine run waits about 1 s (measured: 1.01-1.16 s, every run, also with
``polling_interval`` 0.1) before it is sent, while the engine's executor starts; the other tasks do
not. A window is therefore N >= 1000 tasks by default, so that second is under a tenth of it, and
it lies beyond p99 in the latency figures.

Every Redis key carries ``<prefix>:`` (kombu's ``global_keyprefix`` transport option), so the run
deletes exactly the keys it created. Storage is TaskFlow's default in-memory persistence.

Worker: ``python -m bench.peers.taskflow_worker ...`` (see that module); it logs ``worker ready``.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

from taskflow import engines, states, task
from taskflow.engines.worker_based.executor import WorkerTaskExecutor
from taskflow.patterns import linear_flow, unordered_flow
from taskflow.types import notifier

from bench.common import BenchConfig, Daemon, run_bounded


class NoOp(task.Task):
    """Does nothing and returns None."""

    def execute(self) -> None:
        return None


class TaskflowSystem:
    """TaskFlow worker-based engine: one worker process with ``slots`` threads."""

    name = "taskflow"

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.prefix = f"bench-{config.run}-taskflow"
        self.exchange = f"{self.prefix}-exchange"
        self.topic = f"{self.prefix}-topic"
        self.transport_options = {"global_keyprefix": f"{self.prefix}:"}
        self.worker: Daemon | None = None
        self.executor: WorkerTaskExecutor | None = None

    def start(self) -> None:
        self.worker = Daemon(
            [sys.executable, "-m", "bench.peers.taskflow_worker",
             "--broker", self.config.broker_url, "--exchange", self.exchange,
             "--topic", self.topic, "--prefix", self.prefix, "--threads", str(self.config.slots)],
            self.config.log_dir, "taskflow-worker",
        )  # fmt: skip
        self.worker.wait_ready("worker ready", timeout=60)
        self.executor = WorkerTaskExecutor(
            uuid=uuid.uuid4().hex,
            exchange=self.exchange,
            topics=[self.topic],
            url=self.config.broker_url,
            transport_options=self.transport_options,
        )
        self.executor.start()
        missing = self.executor.wait_for_workers(workers=1, timeout=30)
        self.executor.stop()
        if missing:
            raise TimeoutError("the TaskFlow worker did not announce itself within 30 s")

    def pids(self) -> list[int]:
        return [self.worker.pid] if self.worker else []

    def _engine(self, flow: Any) -> Any:
        return engines.load(
            flow,
            engine="worker-based",
            executor=self.executor,
            exchange=self.exchange,
            topics=[self.topic],
            url=self.config.broker_url,
            transport_options=self.transport_options,
        )

    def run_batch(self, tasks: int, timeout: float) -> None:
        flow = unordered_flow.Flow("noops")
        flow.add(*(NoOp(name=f"noop-{i}") for i in range(tasks)))
        run_bounded(self._engine(flow).run, timeout, "TaskFlow engine run")

    def round_trips(self, tasks: int, timeout: float) -> list[float]:
        flow = linear_flow.Flow("noops")
        flow.add(*(NoOp(name=f"noop-{i}") for i in range(tasks)))
        engine = self._engine(flow)
        started: dict[str, float] = {}
        durations: list[float] = []

        def on_state(state: str, details: dict[str, Any]) -> None:
            now = time.perf_counter()
            if state == states.RUNNING:
                started[details["task_name"]] = now
            elif state == states.SUCCESS and details["task_name"] in started:
                durations.append(now - started[details["task_name"]])

        engine.atom_notifier.register(notifier.Notifier.ANY, on_state)
        run_bounded(engine.run, timeout, "TaskFlow engine run")
        return durations

    def key_patterns(self) -> list[str]:
        return [f"{self.prefix}:*"]

    def close(self) -> None:
        if self.executor is not None:
            self.executor.stop()
            self.executor = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
