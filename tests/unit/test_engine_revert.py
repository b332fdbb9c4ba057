"""Failure handling: stop, let in-flight finish, revert what ran newest first, re-raise."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from workerflow import Engine, Failure, GraphFlow, LinearFlow, Task, UnorderedFlow
from workerflow.errors import WrappedFailure
from workerflow.executors import TaskCall, ThreadExecutor
from workerflow.states import FlowState, TaskState


class Boom(Exception):
    pass


class Step(Task):
    """Records execute and revert (with what revert got) in the injected ``journal``."""

    def execute(self, journal: list[Any], **inputs: Any) -> str:
        journal.append(("execute", self.name))
        return f"result-{self.name}"

    def revert(self, journal: list[Any], result: Any, flow_failures: dict[str, Failure]) -> None:
        journal.append(("revert", self.name, result, sorted(flow_failures)))


class Fail(Step):
    def execute(self, journal: list[Any], **inputs: Any) -> str:
        journal.append(("execute", self.name))
        raise Boom(f"{self.name} failed")


class NoRevert(Task):
    def execute(self, journal: list[Any]) -> None:
        journal.append(("execute", self.name))


class BadRevert(Step):
    def revert(self, journal: list[Any], result: Any, flow_failures: dict[str, Failure]) -> None:
        journal.append(("revert", self.name))
        raise OSError(f"cannot undo {self.name}")


def reverts(journal: list[Any]) -> list[str]:
    return [entry[1] for entry in journal if entry[0] == "revert"]


def test_linear_failure_reverts_in_reverse_order_including_the_failed_task() -> None:
    journal: list[Any] = []
    flow = LinearFlow("f").add(Step(name="a"), Step(name="b"), Fail(name="c"), Step(name="d"))
    engine = Engine(flow, store={"journal": journal})
    with pytest.raises(Boom, match="c failed") as raised:
        engine.run()
    assert reverts(journal) == ["c", "b", "a"]
    assert ("execute", "d") not in journal  # never started, never reverted
    assert engine.storage.get_state("d") == TaskState.PENDING
    assert engine.state == FlowState.REVERTED
    assert all(engine.storage.get_state(n) == TaskState.REVERTED for n in "abc")
    # the failed task's own revert got its Failure as result; the others their results
    failed_revert = next(e for e in journal if e[:2] == ("revert", "c"))
    assert isinstance(failed_revert[2], Failure)
    assert failed_revert[2].check(Boom)
    assert failed_revert[3] == ["c"]
    assert ("revert", "b", "result-b", ["c"]) in journal
    # the original exception object is raised, not a copy
    assert raised.value is engine.storage.get_failure("c").exception  # type: ignore[union-attr]


def test_graph_reverts_successors_before_predecessors() -> None:
    journal: list[Any] = []

    class Provide(Step):
        def execute(self, journal: list[Any], **inputs: Any) -> str:
            return super().execute(journal)

    a = Provide(name="a", provides="x")
    b = Provide(name="b", provides="y", requires="x")
    c = Provide(name="c", provides="z", requires="x")
    d = Fail(name="d", requires=("y", "z"))
    flow = GraphFlow("g").add(d, c, b, a)
    with pytest.raises(Boom):
        Engine(flow, store={"journal": journal}).run()
    order = reverts(journal)
    assert order[0] == "d"
    assert set(order[1:3]) == {"b", "c"}
    assert order[3] == "a"


def test_unordered_flow_reverts_newest_first_and_skips_unstarted() -> None:
    journal: list[Any] = []
    flow = UnorderedFlow("u").add(Step(name="a"), Step(name="b"), Fail(name="c"), Step(name="d"))
    with pytest.raises(Boom):
        Engine(flow, store={"journal": journal}).run()
    assert reverts(journal) == ["c", "b", "a"]
    assert ("execute", "d") not in journal


def test_nested_flows_revert_across_levels() -> None:
    journal: list[Any] = []
    flow = LinearFlow("outer").add(
        Step(name="a"),
        UnorderedFlow("mid").add(Step(name="b"), LinearFlow("inner").add(Step(name="c"))),
        LinearFlow("last").add(Fail(name="d"), Step(name="e")),
    )
    with pytest.raises(Boom):
        Engine(flow, store={"journal": journal}).run()
    order = reverts(journal)
    assert order[0] == "d"
    assert set(order[1:3]) == {"b", "c"}
    assert order[3] == "a"
    assert ("execute", "e") not in journal


def test_in_flight_tasks_finish_before_reverting_and_nothing_new_starts() -> None:
    journal: list[Any] = []
    slow_started = threading.Event()
    failure_seen = threading.Event()  # set once the engine has processed the failure

    class Slow(Step):
        def execute(self, journal: list[Any], **inputs: Any) -> str:
            slow_started.set()
            assert failure_seen.wait(10)
            return super().execute(journal)

    class FailAfterSlow(Fail):
        def execute(self, journal: list[Any], **inputs: Any) -> str:
            assert slow_started.wait(10)
            return super().execute(journal)

    flow = UnorderedFlow("u").add(Slow(name="slow"), FailAfterSlow(name="fail"), Step(name="later"))
    engine = Engine(flow, store={"journal": journal}, executor=ThreadExecutor(2))
    engine.atom_notifier.register(
        lambda event, details: failure_seen.set() if event == "FAILURE" else None
    )
    with pytest.raises(Boom):
        engine.run()
    # slow was still running when fail failed: it finished before any revert, then was reverted
    assert journal.index(("execute", "slow")) < min(
        i for i, e in enumerate(journal) if e[0] == "revert"
    )
    assert "slow" in reverts(journal)
    # a slot freed up when slow finished, but nothing new starts once a task has failed
    assert ("execute", "later") not in journal
    assert engine.storage.get_state("later") == TaskState.PENDING


def test_noop_reverts_are_not_dispatched_but_marked_reverted() -> None:
    journal: list[Any] = []
    calls: list[str] = []

    class Spy(ThreadExecutor):
        def submit(self, call: TaskCall) -> Any:
            calls.append(f"{call.action}:{call.task.name}")
            return super().submit(call)

    flow = LinearFlow("f").add(NoRevert(name="n"), Step(name="s"), Fail(name="x"))
    engine = Engine(flow, store={"journal": journal}, executor=Spy(1))
    with pytest.raises(Boom):
        engine.run()
    assert "revert:n" not in calls
    assert calls.count("revert:s") == 1
    assert engine.storage.get_state("n") == TaskState.REVERTED


def test_several_failures_raise_wrapped_failure_with_all_of_them() -> None:
    journal: list[Any] = []
    barrier = threading.Barrier(2, timeout=10)

    class FailTogether(Fail):
        def execute(self, journal: list[Any], **inputs: Any) -> str:
            barrier.wait()  # both are in flight before either fails
            return super().execute(journal)

    flow = UnorderedFlow("u").add(FailTogether(name="p"), FailTogether(name="q"))
    engine = Engine(flow, store={"journal": journal}, executor=ThreadExecutor(2))
    with pytest.raises(WrappedFailure) as raised:
        engine.run()
    assert sorted(str(f) for f in raised.value) == ["Boom: p failed", "Boom: q failed"]
    assert len(raised.value) == 2
    assert sorted(reverts(journal)) == ["p", "q"]
    assert ("revert", "p", raised.value.failures[0], ["p", "q"]) in journal or (
        "revert",
        "p",
        raised.value.failures[1],
        ["p", "q"],
    ) in journal


def test_failed_revert_is_revert_failure_and_both_errors_are_reported() -> None:
    journal: list[Any] = []
    flow = LinearFlow("f").add(Step(name="a"), BadRevert(name="b"), Fail(name="c"))
    engine = Engine(flow, store={"journal": journal})
    with pytest.raises(Boom, match="c failed") as raised:
        engine.run()
    assert engine.storage.get_state("b") == TaskState.REVERT_FAILURE
    assert engine.state == FlowState.FAILURE
    notes = "\n".join(raised.value.__notes__)
    assert "reverting task 'b' failed too: OSError: cannot undo b" in notes
    revert_failure = engine.storage.get_failure("b", revert=True)
    assert revert_failure is not None and revert_failure.check(OSError)
    assert engine.revert_failures == {"b": revert_failure}
    # reverting stops at the failed revert: what it would undo may depend on it
    assert reverts(journal) == ["c", "b"]
    assert engine.storage.get_state("a") == TaskState.SUCCESS


def test_failure_raises_again_from_a_finished_engine() -> None:
    journal: list[Any] = []
    engine = Engine(LinearFlow("f").add(Fail(name="x")), store={"journal": journal})
    with pytest.raises(Boom) as first:
        engine.run()
    with pytest.raises(Boom) as second:
        engine.run()
    assert first.value is second.value
    assert reverts(journal) == ["x"]


def test_flow_notifications_for_a_failed_run() -> None:
    journal: list[Any] = []
    states: list[str] = []
    engine = Engine(LinearFlow("f").add(Fail(name="x")), store={"journal": journal})
    engine.notifier.register(lambda state, details: states.append(state))
    with pytest.raises(Boom):
        engine.run()
    assert states == ["RUNNING", "REVERTING", "REVERTED"]


def test_listener_errors_never_mask_the_task_error() -> None:
    journal: list[Any] = []
    engine = Engine(LinearFlow("f").add(Fail(name="x")), store={"journal": journal})

    def broken(event: str, details: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    engine.notifier.register(broken)
    engine.atom_notifier.register(broken)
    with pytest.raises(Boom):
        engine.run()
    assert engine.state == FlowState.REVERTED


def test_executor_that_raises_on_submit_fails_the_task_cleanly() -> None:
    journal: list[Any] = []

    class Refusing(ThreadExecutor):
        def submit(self, call: TaskCall) -> Any:
            raise RuntimeError("executor closed")

    engine = Engine(
        LinearFlow("f").add(Step(name="a")), store={"journal": journal}, executor=Refusing()
    )
    with pytest.raises(RuntimeError, match="executor closed") as raised:
        engine.run()
    # its revert cannot be submitted either: both errors are reported
    assert engine.storage.get_state("a") == TaskState.REVERT_FAILURE
    assert engine.state == FlowState.FAILURE
    assert any("reverting task 'a' failed too" in n for n in raised.value.__notes__)
