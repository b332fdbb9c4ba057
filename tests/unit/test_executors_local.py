"""Local executors: serial, threads and processes; futures always hold a value or a Failure."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from workerflow import Engine, Failure, GraphFlow, LinearFlow, Task, task
from workerflow.errors import ExecutorError, SerializationError, WorkerLost
from workerflow.executors import ProcessExecutor, SerialExecutor, ThreadExecutor
from workerflow.executors.local import load_task
from workerflow.states import TaskState

# -- tasks importable by child processes ---------------------------------------------------------


class Rendezvous(Task):
    """Arrives in ``directory``, waits for ``expected`` arrivals: proves overlap, not timing."""

    def execute(self, directory: str, expected: int) -> int:
        Path(directory, self.name).touch()
        deadline = time.monotonic() + 20
        while len(os.listdir(directory)) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: the other tasks never ran alongside")
            time.sleep(0.005)
        return os.getpid()


class Reporting(Task):
    provides = "reported"

    def execute(self, steps: int) -> int:
        for i in range(steps):
            self.update_progress((i + 1) / steps, step=i + 1)
        return steps


class Unpicklable(Task):
    def execute(self) -> Any:
        return threading.Lock()


class Dies(Task):
    def execute(self) -> None:
        os._exit(3)


class Raises(Task):
    def execute(self, message: str) -> None:
        raise KeyError(message)

    def revert(self, result: Failure, flow_failures: dict[str, Failure]) -> str:
        return f"{result.exception_type_name}|{sorted(flow_failures)}"


@task(provides="double")
def double(x: int) -> int:
    return 2 * x


# -- serial and threads --------------------------------------------------------------------------


def test_serial_executor_runs_inline_and_returns_failures() -> None:
    executor = SerialExecutor()
    assert executor.capacity == 1
    ok = executor.execute(double, {"x": 2})
    assert ok.done() and ok.result() == 4
    bad = executor.execute(Raises(), {"message": "m"})
    assert isinstance(bad.result(), Failure) and bad.result().check(KeyError)


def test_thread_executor_runs_a_graph_in_parallel(tmp_path: Path) -> None:
    branches = [Rendezvous(name=f"r{i}", provides=f"pid{i}") for i in range(3)]
    flow = GraphFlow("g").add(*branches)
    engine = Engine(
        flow, store={"directory": str(tmp_path), "expected": 3}, executor=ThreadExecutor(3)
    )
    engine.run()  # would raise TimeoutError had they not overlapped
    assert all(engine.storage.get_state(f"r{i}") == TaskState.SUCCESS for i in range(3))


def test_thread_executor_start_stop_are_idempotent_and_required() -> None:
    executor = ThreadExecutor(2)
    with pytest.raises(ExecutorError):
        executor.execute(double, {"x": 1})
    executor.start()
    executor.start()
    assert executor.execute(double, {"x": 1}).result() == 2
    executor.stop()
    executor.stop()
    with pytest.raises(ValueError):
        ThreadExecutor(0)


# -- processes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processes() -> Any:
    with ProcessExecutor(3) as executor:
        yield executor


def test_process_executor_runs_a_graph_in_parallel_processes(
    processes: ProcessExecutor, tmp_path: Path
) -> None:
    flow = GraphFlow("g").add(*[Rendezvous(name=f"r{i}", provides=f"pid{i}") for i in range(3)])
    engine = Engine(flow, store={"directory": str(tmp_path), "expected": 3}, executor=processes)
    engine.run()
    pids = {engine.storage.fetch(f"pid{i}") for i in range(3)}
    assert len(pids) == 3 and os.getpid() not in pids


def test_process_executor_progress_and_function_tasks(processes: ProcessExecutor) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    flow = LinearFlow("f").add(Reporting(name="rep"), double.clone(rebind={"x": "reported"}))
    engine = Engine(flow, store={"steps": 3}, executor=processes)
    engine.atom_notifier.register(lambda e, d: events.append((e, d)))
    engine.run()
    assert engine.storage.fetch("double") == 6
    progress = [d["progress"] for e, d in events if e == "PROGRESS"]
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert engine.storage.get_progress("rep") == (1.0, {"step": 3})


def test_process_executor_failure_and_revert_arguments(processes: ProcessExecutor) -> None:
    failure = processes.execute(Raises(name="r"), {"message": "missing"}).result(10)
    assert isinstance(failure, Failure)
    assert failure.check(KeyError) and "missing" in failure.message
    assert "Traceback" in failure.traceback_text
    reverted = processes.revert(
        Raises(name="r"), {"message": "m"}, result=failure, flow_failures={"r": failure}
    ).result(10)
    assert reverted == "builtins.KeyError|['r']"


def test_unpicklable_result_is_a_clear_failure(processes: ProcessExecutor) -> None:
    outcome = processes.execute(Unpicklable(name="u"), {}).result(10)
    assert isinstance(outcome, Failure)
    assert outcome.check(SerializationError)
    assert "result of task 'u'" in outcome.message and "cannot be pickled" in outcome.message


def test_unpicklable_argument_is_a_clear_failure(processes: ProcessExecutor) -> None:
    outcome = processes.execute(double, {"x": threading.Lock()}).result(10)
    assert isinstance(outcome, Failure) and outcome.check(SerializationError)
    assert "arguments of task" in outcome.message


def test_task_defined_in_a_function_is_a_clear_failure(processes: ProcessExecutor) -> None:
    class Local(Task):
        def execute(self) -> None:
            pass

    outcome = processes.execute(Local(name="local"), {}).result(10)
    assert isinstance(outcome, Failure) and outcome.check(SerializationError)
    assert "module level" in outcome.message


def test_dying_child_is_worker_lost_and_the_executor_recovers() -> None:
    with ProcessExecutor(1) as executor:
        outcome = executor.execute(Dies(name="dies"), {}).result(30)
        assert isinstance(outcome, Failure) and outcome.check(WorkerLost)
        assert executor.execute(double, {"x": 5}).result(30) == 10


def test_process_executor_requires_start() -> None:
    executor = ProcessExecutor(1)
    with pytest.raises(ExecutorError):
        executor.execute(double, {"x": 1})
    executor.stop()  # stopping a never-started executor is fine


def test_load_task_builds_classes_and_function_tasks() -> None:
    built = load_task(f"{__name__}:Reporting", "named")
    assert isinstance(built, Reporting) and built.name == "named"
    fn = load_task(double.task_type, "d2")
    assert fn.name == "d2" and fn.execute(x=2) == 4
    with pytest.raises(ValueError):
        load_task("no-colon", "x")


def test_process_executor_start_failure_releases_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = ProcessExecutor(1)

    def broken() -> Any:
        raise OSError("no processes for you")

    monkeypatch.setattr(executor, "_new_pool", broken)
    with pytest.raises(OSError, match="no processes"):
        executor.start()
    assert executor._queue is None and executor._pool is None
    monkeypatch.undo()
    with executor:
        assert executor.execute(double, {"x": 4}).result(30) == 8
