"""Suspending a running flow (run_iter send, suspend() from a listener or another thread) and
resuming the same engine without re-running finished tasks."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from workerflow import Engine, LinearFlow, Task, UnorderedFlow, task
from workerflow.executors import ThreadExecutor
from workerflow.states import FlowState, TaskState


class Count(Task):
    def execute(self, counts: dict[str, int]) -> str:
        counts[self.name] = counts.get(self.name, 0) + 1
        return self.name


def linear(n: int) -> LinearFlow:
    return LinearFlow("f").add(*[Count(name=f"t{i}") for i in range(n)])


def test_sending_true_to_run_iter_suspends_and_run_resumes() -> None:
    counts: dict[str, int] = {}
    engine = Engine(linear(5), store={"counts": counts})
    iterator = engine.run_iter()
    states = [next(iterator)]
    while counts.get("t1") != 1:
        states.append(next(iterator))
    states.append(iterator.send(True))
    states.extend(iterator)
    assert states[-1] == FlowState.SUSPENDED
    assert engine.state == FlowState.SUSPENDED
    done = [f"t{i}" for i in range(5) if engine.storage.get_state(f"t{i}") == TaskState.SUCCESS]
    assert done == ["t0", "t1"]

    resumed: list[str] = []
    engine.notifier.register(lambda state, details: resumed.append(state))
    engine.run()
    assert resumed == ["RESUMING", "RUNNING", "SUCCESS"]
    assert counts == {f"t{i}": 1 for i in range(5)}  # nothing ran twice


def test_suspend_from_a_listener() -> None:
    counts: dict[str, int] = {}
    engine = Engine(linear(4), store={"counts": counts})

    def on_task(event: str, details: dict[str, Any]) -> None:
        if event == "SUCCESS" and details["task"] == "t0":
            engine.suspend()

    engine.atom_notifier.register(on_task)
    engine.run()
    assert engine.state == FlowState.SUSPENDED
    assert counts == {"t0": 1}
    engine.atom_notifier.deregister(on_task)
    engine.run()
    assert counts == {f"t{i}": 1 for i in range(4)}


def test_suspend_from_another_thread_waits_for_in_flight_tasks() -> None:
    counts: dict[str, int] = {}
    started = threading.Event()
    release = threading.Event()

    class Blocking(Count):
        def execute(self, counts: dict[str, int]) -> str:
            started.set()
            assert release.wait(10)
            return super().execute(counts)

    flow = LinearFlow("f").add(Blocking(name="block"), Count(name="next"))
    engine = Engine(flow, store={"counts": counts}, executor=ThreadExecutor(2))
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            engine.run()
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    assert started.wait(10)
    engine.suspend()
    release.set()
    runner.join(10)
    assert result == [None]
    assert engine.state == FlowState.SUSPENDED
    assert counts == {"block": 1}  # in flight finished; the next one did not start
    engine.run()
    assert counts == {"block": 1, "next": 1}


def test_suspend_during_revert_resumes_reverting() -> None:
    reverted: list[str] = []

    class Undo(Task):
        def execute(self) -> None:
            pass

        def revert(self, result: Any) -> None:
            reverted.append(self.name)

    @task
    def fail() -> None:
        raise ValueError("boom")

    flow = LinearFlow("f").add(Undo(name="a"), Undo(name="b"), fail)
    engine = Engine(flow)
    iterator = engine.run_iter()
    for state in iterator:
        if state == FlowState.REVERTING:
            break
    assert iterator.send(True) == FlowState.SUSPENDED
    assert list(iterator) == []
    assert engine.state == FlowState.SUSPENDED
    assert engine.storage.get_state("b") == TaskState.SUCCESS
    partial = list(reverted)
    with pytest.raises(ValueError, match="boom"):
        engine.run()
    assert engine.storage.get_flow_state() == FlowState.REVERTED
    assert reverted == ["b", "a"]
    assert partial == []


def test_suspended_unordered_flow_keeps_unstarted_tasks_pending() -> None:
    counts: dict[str, int] = {}
    flow = UnorderedFlow("u").add(*[Count(name=f"t{i}") for i in range(6)])
    engine = Engine(flow, store={"counts": counts})
    iterator = engine.run_iter()
    next(iterator)
    next(iterator)
    iterator.send(True)
    list(iterator)
    pending = [n for n in (f"t{i}" for i in range(6)) if engine.storage.get_state(n) == "PENDING"]
    assert pending and len(pending) < 6
    engine.run()
    assert counts == {f"t{i}": 1 for i in range(6)}
