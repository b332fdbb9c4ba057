"""Flows on worker subprocesses through WorkerExecutor: results, dataflow, revert, progress.

Each test runs once on the real Redis and once on the real RabbitMQ (``broker_url``), with its own
namespace, and starts real ``python -m worker`` daemons registering ``tests.remote_tasks``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.remote_tasks import Add, Fail, Pid, RecordRevert, Sleep, SlowPid, multiply
from tests.support import running_workers
from workerflow import Engine, GraphFlow, LinearFlow, UnorderedFlow
from workerflow.executors import WorkerExecutor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def executor_for(broker_url: str, namespace: str, **kwargs: Any) -> WorkerExecutor:
    options: dict[str, Any] = {"discovery_timeout": 5.0, "heartbeat_timeout": 3.0}
    options.update(kwargs)
    return WorkerExecutor(broker_url, namespace=namespace, **options)


def test_linear_unordered_and_graph_flows_across_two_workers(
    broker_url: str, namespace: str
) -> None:
    with (
        running_workers(broker_url, namespace, 2, args=["--concurrency", "1"]) as workers,
        executor_for(broker_url, namespace) as executor,
    ):
        pids = {w.pid for w in workers}

        linear = LinearFlow("linear").add(
            Add(),  # sum = a + b
            multiply.clone(rebind={"a": "sum"}),  # product = sum * b
            Add(name="total", provides="total", rebind={"a": "product", "b": "sum"}),
            Pid(),
        )
        engine = Engine(linear, store={"a": 2, "b": 3}, executor=executor)
        engine.run()
        assert engine.storage.fetch("sum") == 5
        assert engine.storage.fetch("product") == 15
        assert engine.storage.fetch("total") == 20
        assert engine.storage.fetch("pid") in pids

        # Four 0.3 s tasks, two workers with one slot each: neither worker can take them all.
        unordered = UnorderedFlow("unordered").add(
            *(SlowPid(name=f"p{i}", provides=f"pid{i}", inject={"seconds": 0.3}) for i in range(4))
        )
        engine = Engine(unordered, executor=executor)
        engine.run()
        ran_in = {engine.storage.fetch(f"pid{i}") for i in range(4)}
        assert ran_in == pids, f"tasks ran in {ran_in}, workers are {pids}"

        graph = GraphFlow("graph").add(
            # Added out of order on purpose: the graph orders them by data.
            Add(name="total", provides="total", rebind={"a": "product", "b": "sum"}),
            multiply.clone(rebind={"a": "sum"}),
            Add(),
            SlowPid(name="left", provides="left", inject={"seconds": 0.2}),
            SlowPid(name="right", provides="right", inject={"seconds": 0.2}),
        )
        engine = Engine(graph, store={"a": 4, "b": 5}, executor=executor)
        engine.run()
        results = engine.storage.fetch_all()
        assert (results["sum"], results["product"], results["total"]) == (9, 45, 54)
        assert {results["left"], results["right"]} <= pids


def test_a_remote_failure_reverts_on_the_workers_and_reraises_the_original(
    broker_url: str, namespace: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    flow = LinearFlow("fails").add(
        RecordRevert(name="first"),
        RecordRevert(name="second"),
        Fail(inject={"message": "size must be positive"}),
        RecordRevert(name="never"),
    )
    with (
        running_workers(broker_url, namespace, 2) as _,
        executor_for(broker_url, namespace) as executor,
    ):
        engine = Engine(flow, store={"journal": str(journal)}, executor=executor)
        with pytest.raises(ValueError, match="size must be positive") as caught:
            engine.run()
    # Rebuilt from the worker's Failure, with the remote traceback attached.
    assert any("remote traceback" in note for note in getattr(caught.value, "__notes__", []))
    assert journal.read_text().split() == [
        "execute:first",
        "execute:second",
        "revert:second",
        "revert:first",
    ]
    assert engine.state == "REVERTED"
    assert engine.storage.get_state("first") == "REVERTED"
    assert engine.storage.get_state("Fail") == "REVERTED"
    assert engine.storage.get_state("never") == "PENDING"


def test_progress_from_a_remote_task_reaches_the_atom_notifier_in_order(
    broker_url: str, namespace: str
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def listener(event: str, details: dict[str, Any]) -> None:
        with lock:
            events.append((event, dict(details)))

    with (
        running_workers(broker_url, namespace, 1) as _,
        executor_for(broker_url, namespace) as executor,
    ):
        engine = Engine(
            LinearFlow("progress").add(Sleep()),
            store={"seconds": 1.0, "steps": 5},
            executor=executor,
        )
        engine.atom_notifier.register(listener)
        engine.run()
    assert engine.storage.fetch("slept") == 1.0
    sleep_events = [(e, d) for e, d in events if d.get("task") == "Sleep"]
    names = [e for e, _ in sleep_events]
    assert names[0] == "RUNNING" and names[-1] == "SUCCESS", names
    progress = [d["progress"] for e, d in sleep_events if e == "PROGRESS"]
    steps = [d["step"] for e, d in sleep_events if e == "PROGRESS"]
    # Coalescing may merge updates, but never reorders them and always sends the last one.
    assert len(progress) >= 3, progress
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert steps == sorted(steps) and steps[-1] == 5
    assert names.index("PROGRESS") > names.index("RUNNING")
