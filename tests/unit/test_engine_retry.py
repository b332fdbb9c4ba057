"""Retry in the engine: flow controllers (revert, run again) and task retry policies."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest
import tenacity

from workerflow import Engine, Failure, LinearFlow, Task, UnorderedFlow, task
from workerflow.errors import WorkerLost
from workerflow.executors import SerialExecutor, TaskCall, ThreadExecutor
from workerflow.retry import (
    Decision,
    ForEach,
    History,
    ParameterizedForEach,
    Retry,
    RetryPolicy,
    Times,
)
from workerflow.states import FlowState, TaskState


class Boom(Exception):
    pass


class Step(Task):
    def execute(self, journal: list[Any]) -> None:
        journal.append(("execute", self.name))

    def revert(self, journal: list[Any], result: Any) -> None:
        journal.append(("revert", self.name))


class FailUntil(Task):
    """Fails while the value it is fed is below ``good``."""

    def execute(self, journal: list[Any], value: int, good: int) -> int:
        journal.append(("try", value))
        if value < good:
            raise Boom(f"value {value} is too small")
        return value

    def revert(self, journal: list[Any], result: Any) -> None:
        journal.append(("revert", self.name))


def test_times_reverts_the_subflow_between_attempts_and_succeeds() -> None:
    journal: list[Any] = []
    attempts: list[int] = []

    @task(provides="done")
    def flaky(journal: list[Any], attempt: int) -> int:
        attempts.append(attempt)
        if attempt < 3:
            raise Boom(f"attempt {attempt}")
        return attempt

    inner = LinearFlow("inner", retry=Times(3, provides="attempt")).add(Step(name="s"), flaky)
    flow = LinearFlow("outer").add(Step(name="before"), inner, Step(name="after"))
    engine = Engine(flow, store={"journal": journal})
    engine.run()
    assert attempts == [1, 2, 3]
    assert journal == [
        ("execute", "before"),
        ("execute", "s"),
        ("revert", "s"),
        ("execute", "s"),
        ("revert", "s"),
        ("execute", "s"),
        ("execute", "after"),
    ]
    assert engine.storage.fetch("done") == 3
    assert engine.state == FlowState.SUCCESS


def test_for_each_feeds_values_and_exhaustion_propagates_outwards() -> None:
    journal: list[Any] = []
    inner = LinearFlow("inner", retry=ForEach([1, 2, 3], provides="value")).add(
        Step(name="s"), FailUntil(name="f", inject={"good": 10})
    )
    flow = LinearFlow("outer").add(Step(name="before"), inner, Step(name="after"))
    engine = Engine(flow, store={"journal": journal})
    with pytest.raises(Boom, match="value 3 is too small"):
        engine.run()
    tries = [e[1] for e in journal if e[0] == "try"]
    assert tries == [1, 2, 3]
    # after the last attempt the whole flow is reverted, newest first
    assert journal[-3:] == [("revert", "f"), ("revert", "s"), ("revert", "before")]
    assert ("execute", "after") not in journal
    assert engine.state == FlowState.REVERTED
    assert engine.storage.get_state("inner.retry") == TaskState.REVERTED


def test_parameterized_for_each_reads_values_from_storage() -> None:
    journal: list[Any] = []
    inner = LinearFlow("inner", retry=ParameterizedForEach(requires="candidates", provides="value"))
    inner.add(FailUntil(name="f", inject={"good": 5}, provides="chosen"))
    engine = Engine(inner, store={"journal": journal, "candidates": [1, 5, 9]})
    engine.run()
    assert engine.storage.fetch("chosen") == 5
    assert [e[1] for e in journal if e[0] == "try"] == [1, 5]


def test_outer_controller_decides_after_inner_gives_up() -> None:
    journal: list[Any] = []
    outer_runs: list[int] = []

    @task
    def count(outer_attempt: int) -> None:
        outer_runs.append(outer_attempt)

    inner = LinearFlow("inner", retry=ForEach([1, 2], provides="value")).add(
        FailUntil(name="f", rebind={"good": "threshold"})
    )
    outer = LinearFlow("outer", retry=Times(2, provides="outer_attempt")).add(count, inner)
    engine = Engine(outer, store={"journal": journal, "threshold": 99})
    with pytest.raises(Boom):
        engine.run()
    assert outer_runs == [1, 2]
    # each outer attempt runs the inner flow with both values again: its history was reset
    assert [e[1] for e in journal if e[0] == "try"] == [1, 2, 1, 2]


def test_retry_controller_history_and_custom_decisions() -> None:
    seen: list[tuple[int, list[str]]] = []

    class Recorder(Retry):
        def execute(self, history: History, **inputs: Any) -> int:
            seen.append((len(history), [str(f) for f in history.last_failures.values()]))
            return len(history)

        def on_failure(self, history: History, **inputs: Any) -> Decision:
            return Decision.RETRY if len(history) < 3 else Decision.REVERT

    @task
    def fail_twice(n: int) -> None:
        if n < 2:
            raise Boom(f"n={n}")

    flow = LinearFlow("f", retry=Recorder(name="rec", provides="n")).add(fail_twice)
    Engine(flow).run()
    assert seen == [(0, []), (1, ["Boom: n=0"]), (2, ["Boom: n=1"])]


def test_failures_in_two_parallel_retry_scopes_are_retried_independently() -> None:
    runs: dict[str, list[int]] = {"a": [], "b": []}

    def make(label: str) -> Task:
        @task(name=f"work_{label}", rebind={"attempt": f"attempt_{label}"})
        def work(attempt: int) -> None:
            runs[label].append(attempt)
            if attempt < 2:
                raise Boom(label)

        return work

    flow = UnorderedFlow("both").add(
        LinearFlow("a", retry=Times(3, provides="attempt_a")).add(make("a")),
        LinearFlow("b", retry=Times(3, provides="attempt_b")).add(make("b")),
    )
    Engine(flow, executor=ThreadExecutor(2)).run()
    assert runs == {"a": [1, 2], "b": [1, 2]}


# -- task retry policies ------------------------------------------------------------------------


def test_task_retry_policy_runs_again_with_increasing_attempts() -> None:
    attempts: list[int] = []
    events: list[tuple[str, str]] = []

    class Recording(SerialExecutor):
        def execute(self, task: Task, arguments: Any, *, attempt: int = 1, **kw: Any) -> Any:
            attempts.append(attempt)
            return super().execute(task, arguments, attempt=attempt, **kw)

    calls = iter([Boom("1"), Boom("2"), None])

    @task(provides="v", retry_policy=RetryPolicy(stop=tenacity.stop_after_attempt(5)))
    def transient() -> str:
        error = next(calls)
        if error is not None:
            raise error
        return "ok"

    engine = Engine(LinearFlow("f").add(transient), executor=Recording())
    engine.atom_notifier.register(lambda event, details: events.append((event, details["task"])))
    engine.run()
    assert attempts == [1, 2, 3]
    assert engine.storage.fetch("v") == "ok"
    states = [e for e, _ in events]
    assert states == [
        "RUNNING",
        "FAILURE",
        "RETRYING",
        "RUNNING",
        "FAILURE",
        "RETRYING",
        "RUNNING",
        "SUCCESS",
    ]


def test_task_retry_policy_gives_up_after_stop_and_reverts() -> None:
    calls: list[int] = []

    @task(retry_policy=RetryPolicy(stop=tenacity.stop_after_attempt(2)), revert=lambda: None)
    def always() -> None:
        calls.append(1)
        raise Boom("always")

    engine = Engine(LinearFlow("f").add(always))
    with pytest.raises(Boom):
        engine.run()
    assert len(calls) == 2
    assert engine.storage.get_state(always.name) == TaskState.REVERTED


def test_retry_on_filters_by_type_and_by_remote_type_name() -> None:
    lost = Failure(("workerflow.errors.WorkerLost", "builtins.Exception"), "gone")

    class LosesOnce(SerialExecutor):
        def __init__(self) -> None:
            self.calls = 0

        def submit(self, call: TaskCall) -> Any:
            self.calls += 1
            if self.calls == 1:
                future: Any = __import__("concurrent.futures").futures.Future()
                future.set_result(lost)
                return future
            return super().submit(call)

    @task(provides="v", retry_policy=RetryPolicy(retry_on=("workerflow.errors.WorkerLost",)))
    def remote() -> int:
        return 1

    executor = LosesOnce()
    engine = Engine(LinearFlow("f").add(remote), executor=executor)
    engine.run()
    assert engine.storage.fetch("v") == 1
    assert executor.calls == 2

    @task(retry_policy=RetryPolicy(retry_on=(WorkerLost,)))
    def not_transient() -> None:
        raise Boom("not retried")

    with pytest.raises(Boom):
        Engine(LinearFlow("g").add(not_transient)).run()


def test_waiting_before_a_retry_does_not_block_other_tasks() -> None:
    other_ran = threading.Event()
    attempts: list[bool] = []

    @task(
        retry_policy=RetryPolicy(wait=tenacity.wait_fixed(30), stop=tenacity.stop_after_attempt(2))
    )
    def waits_long() -> None:
        attempts.append(other_ran.is_set())
        raise Boom("first attempt")

    @task
    def other() -> None:
        other_ran.set()

    engine = Engine(UnorderedFlow("u").add(waits_long, other))
    iterator = engine.run_iter()
    for _ in iterator:
        if other_ran.is_set():
            break
    assert other_ran.is_set()
    assert attempts == [False]  # the retry is scheduled 30 s out, yet `other` already ran
    assert engine.storage.get_state(waits_long.name) == TaskState.RETRYING
    iterator.close()  # abandon the run: the engine is left resumable, nothing in flight
    assert engine.state == FlowState.SUSPENDED


def test_tasks_ready_when_a_retry_scope_failed_wait_for_its_controller_again() -> None:
    events: list[tuple[str, str]] = []
    failed: list[bool] = []

    @task(name="fails_once")
    def fails_once() -> None:
        if not failed:
            failed.append(True)
            raise Boom("first attempt")

    flow = UnorderedFlow("u", retry=Times(2)).add(
        fails_once, task(name="a")(lambda: None), task(name="b")(lambda: None)
    )
    engine = Engine(flow)  # serial: a and b are ready, not started, when fails_once fails
    engine.atom_notifier.register(lambda event, d: events.append((event, d["task"])))
    engine.run()
    retried = events.index(("RETRYING", "u.retry"))
    running = [task for event, task in events[retried:] if event == "RUNNING"]
    assert running == ["u.retry", "fails_once", "a", "b"]
    assert [t for e, t in events if e == "RUNNING"].count("a") == 1


def test_atoms_after_a_retried_flow_wait_for_its_new_attempt() -> None:
    """A retried flow runs whole again before what follows it starts."""
    order: list[str] = []
    attempts: list[int] = []

    @task(name="quick", provides="q")
    def quick() -> int:
        order.append("quick")
        return 1

    @task(name="slow_fail", provides="s")
    def slow_fail(attempt: int) -> int:
        order.append(f"slow_fail{attempt}")
        attempts.append(attempt)
        if attempt == 1:
            raise Boom("first attempt")
        return 2

    @task(name="after")
    def after(q: int, s: int) -> None:
        order.append("after")

    inner = LinearFlow("inner", retry=Times(2, provides="attempt")).add(quick, slow_fail)
    Engine(LinearFlow("outer").add(inner, after)).run()
    assert order == ["quick", "slow_fail1", "quick", "slow_fail2", "after"]


def test_atoms_after_a_retried_unordered_flow_wait_for_every_member() -> None:
    """c needs a and b; a's success in the failed first attempt must not count for the second."""
    calls = {"b": 0}

    class HoldsB(SerialExecutor):
        """Holds the second run of b until the test releases it."""

        capacity = 2

        def __init__(self) -> None:
            self.held: Future[Any] | None = None

        def submit(self, call: TaskCall) -> Future[Any]:
            if call.task.name == "b" and call.action == "execute":
                calls["b"] += 1
                if calls["b"] == 2:
                    self.held = Future()
                    return self.held
            return super().submit(call)

    @task(name="a", provides="x")
    def a() -> int:
        return 1

    @task(name="b", provides="y")
    def b() -> int:
        raise Boom("b fails its first attempt")

    @task(name="c", provides="z")
    def c(x: int, y: int) -> int:
        return x + y

    inner = UnorderedFlow("inner", retry=Times(2)).add(a, b)
    executor = HoldsB()
    engine = Engine(LinearFlow("outer").add(inner, c), executor=executor)
    for _ in engine.run_iter():
        held = executor.held
        if held is not None and not held.done() and engine.storage.get_state("a") == "SUCCESS":
            held.set_result(2)  # b's second attempt finishes only after a's did
    assert engine.storage.fetch("z") == 3
