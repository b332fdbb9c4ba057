"""workerflow under benchmark: one ``python -m worker`` daemon with ``slots`` slots and a client.

Two ways in, two systems:

- ``workerflow``: ``WorkerExecutor.execute(NoOp(), {})`` directly; throughput submits N and waits on
  every future, latency waits on each before sending the next;
- ``workerflow-engine``: an ``Engine`` on the same executor; throughput runs an ``UnorderedFlow`` of
  N no-op tasks, latency a ``LinearFlow`` of N, a round trip being the time from a task's RUNNING
  to its SUCCESS notification on ``engine.atom_notifier``.

The namespace carries the run id, so every queue and key of the run has it in its name.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from typing import Any

from bench.bench_tasks import NoOp
from bench.common import BenchConfig, Daemon, run_bounded
from workerflow import Engine, Failure, LinearFlow, UnorderedFlow
from workerflow.executors import WorkerExecutor


class WorkerflowExecutorSystem:
    """Tasks sent through ``WorkerExecutor.execute`` with no engine in between."""

    name = "workerflow"

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.namespace = f"bench-{config.run}-wf"
        self.worker: Daemon | None = None
        self.executor: WorkerExecutor | None = None
        self.task = NoOp(name="noop")

    def start(self) -> None:
        level = self.config.worker_log_level
        self.worker = Daemon(
            [sys.executable, "-m", "worker", "--broker", self.config.broker_url,
             "--namespace", self.namespace, "--concurrency", str(self.config.slots),
             *(["--log-level", level] if level else []), "bench.bench_tasks"],
            self.config.log_dir, f"{self.name}-worker",
        )  # fmt: skip
        if level in (None, "debug", "info"):
            self.worker.wait_ready("worker ready", timeout=60)
        self.executor = WorkerExecutor(self.config.broker_url, namespace=self.namespace)
        self.executor.start()
        self._wait_serving(deadline=time.monotonic() + 60)

    def _wait_serving(self, deadline: float) -> None:
        """Until one task succeeds: a worker logging at WARNING says nothing when it is ready."""
        while True:
            wait = max(1.0, deadline - time.monotonic())
            value = self.executor.execute(self.task, {}).result(wait)
            if not isinstance(value, Failure):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workerflow worker did not serve a task: {value}")

    def pids(self) -> list[int]:
        return [self.worker.pid] if self.worker else []

    def run_batch(self, tasks: int, timeout: float) -> None:
        futures = [self.executor.execute(self.task, {}) for _ in range(tasks)]
        done, pending = concurrent.futures.wait(futures, timeout=timeout)
        if pending:
            raise TimeoutError(f"workerflow: {len(pending)} of {tasks} tasks unfinished")
        check_results(future.result() for future in done)

    def round_trips(self, tasks: int, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        durations = []
        for _ in range(tasks):
            started = time.perf_counter()
            value = self.executor.execute(self.task, {}).result(deadline - time.monotonic())
            durations.append(time.perf_counter() - started)
            check_results([value])
        return durations

    def key_patterns(self) -> list[str]:
        return [f"*{self.namespace}*"]

    def close(self) -> None:
        if self.executor is not None:
            self.executor.stop()
            self.executor = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


class WorkerflowEngineSystem(WorkerflowExecutorSystem):
    """The same worker and executor, driven by an Engine running a flow of N no-op tasks."""

    name = "workerflow-engine"

    def run_batch(self, tasks: int, timeout: float) -> None:
        flow = UnorderedFlow("noops").add(*(NoOp(name=f"noop-{i}") for i in range(tasks)))
        engine = Engine(flow, store={}, executor=self.executor)
        run_bounded(engine.run, timeout, "workerflow engine run")

    def round_trips(self, tasks: int, timeout: float) -> list[float]:
        flow = LinearFlow("noops").add(*(NoOp(name=f"noop-{i}") for i in range(tasks)))
        engine = Engine(flow, store={}, executor=self.executor)
        started: dict[str, float] = {}
        durations: list[float] = []

        def on_state(event: str, details: dict[str, Any]) -> None:
            now = time.perf_counter()
            name = getattr(details.get("task"), "name", details.get("task"))
            if event == "RUNNING":
                started[name] = now
            elif event == "SUCCESS" and name in started:
                durations.append(now - started.pop(name))

        engine.atom_notifier.register(on_state, events=("RUNNING", "SUCCESS"))
        run_bounded(engine.run, timeout, "workerflow engine run")
        return durations


def check_results(values: Any) -> None:
    """Fail loudly if a no-op came back as a Failure: a benchmark of errors measures nothing."""
    for value in values:
        if isinstance(value, Failure):
            raise RuntimeError(f"workerflow task failed: {value}")
