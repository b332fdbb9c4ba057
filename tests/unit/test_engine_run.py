"""The engine's forward path: dataflow, storage inspection, concurrency, executors it owns."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

import pytest

import workerflow
from tests.support import wait_until
from workerflow import Engine, GraphFlow, LinearFlow, Task, UnorderedFlow, task
from workerflow.errors import NotFound
from workerflow.executors import SerialExecutor, TaskCall, ThreadExecutor
from workerflow.states import FlowState, TaskState
from workerflow.storage import MemoryStorage


class Add(Task):
    provides = "sum"

    def execute(self, a: int, b: int) -> int:
        return a + b


@task(provides="product")
def multiply(a: int, b: int) -> int:
    return a * b


@task(provides=("quotient", "remainder"))
def divide(a: int, b: int) -> tuple[int, int]:
    return divmod(a, b)


def test_brief_example_flow_runs_and_stores_results() -> None:
    class CreateVolume(Task):
        provides = "volume_id"

        def execute(self, size_gb: int) -> str:
            return f"vol-{size_gb}"

    @task(provides="attachment")
    def attach(volume_id: str, server_id: str) -> dict[str, str]:
        return {"volume": volume_id, "server": server_id}

    flow = LinearFlow("boot").add(CreateVolume(), attach)
    engine = Engine(flow, store={"size_gb": 10, "server_id": "s-1"})
    engine.run()
    assert engine.storage.fetch("attachment") == {"volume": "vol-10", "server": "s-1"}
    assert engine.state == FlowState.SUCCESS == "SUCCESS"
    assert attach.name.endswith("attach")
    assert engine.storage.get_state(attach.name) == TaskState.SUCCESS
    assert engine.storage.get_result(CreateVolume().name) == "vol-10"


def test_run_returns_every_stored_value() -> None:
    flow = UnorderedFlow("f").add(Add(), multiply, divide)
    results = workerflow.run(flow, store={"a": 7, "b": 2})
    assert results == {
        "a": 7,
        "b": 2,
        "sum": 9,
        "product": 14,
        "quotient": 3,
        "remainder": 1,
    }


def test_chain_of_one_class_with_rebind_reads_the_nearest_earlier_provider() -> None:
    flow = LinearFlow("chain").add(
        Add(name="first"),  # a + b
        Add(name="second", rebind={"a": "sum"}),  # sum + b
        Add(name="third", rebind={"a": "sum"}),
    )
    engine = Engine(flow, store={"a": 1, "b": 10})
    engine.run()
    assert engine.storage.get_result("first") == 11
    assert engine.storage.get_result("second") == 21
    assert engine.storage.get_result("third") == 31
    assert engine.storage.fetch("sum") == 31


def test_parallel_branches_providing_one_name_each_get_their_own_value() -> None:
    @task(provides="x")
    def make(seed: int) -> int:
        return seed

    @task(provides="out")
    def use(x: int) -> int:
        return x * 100

    branch_one = LinearFlow("one").add(
        make.clone(name="make1", inject={"seed": 1}), use.clone(name="use1", provides="out1")
    )
    branch_two = LinearFlow("two").add(
        make.clone(name="make2", inject={"seed": 2}), use.clone(name="use2", provides="out2")
    )
    engine = Engine(UnorderedFlow("both").add(branch_one, branch_two), executor=ThreadExecutor(4))
    engine.run()
    assert engine.storage.fetch("out1") == 100
    assert engine.storage.fetch("out2") == 200


def test_inject_requires_and_optional_inputs() -> None:
    seen: dict[str, Any] = {}

    class Probe(Task):
        requires = ("extra",)

        def execute(self, a: int, maybe: int = -1, absent: int = -2, **kwargs: Any) -> None:
            seen.update(a=a, maybe=maybe, absent=absent, **kwargs)

    flow = LinearFlow("f").add(Probe(inject={"a": 5}))
    Engine(flow, store={"maybe": 3, "extra": "e", "a": 99}).run()
    assert seen == {"a": 5, "maybe": 3, "absent": -2, "extra": "e"}


def test_tuple_provides_must_match_the_result() -> None:
    @task(provides=("x", "y"))
    def wrong() -> list[int]:
        return [1, 2, 3]

    engine = Engine(LinearFlow("f").add(wrong))
    with pytest.raises(ValueError, match="provides 2 names but returned 3"):
        engine.run()
    assert engine.storage.get_state(wrong.name) == TaskState.REVERTED


def test_storage_inspection_of_results_failures_and_unknown_names() -> None:
    @task(provides="v")
    def ok() -> int:
        return 1

    engine = Engine(LinearFlow("f").add(ok))
    engine.run()
    assert engine.storage.fetch_all() == {"v": 1}
    assert engine.storage.get_failure("ok") is None
    with pytest.raises(NotFound):
        engine.storage.fetch("nope")
    with pytest.raises(NotFound):
        engine.storage.get_result("nope")


def test_graph_flow_orders_by_data_and_explicit_links() -> None:
    order: list[str] = []

    def step(name: str, provides: str | None = None, requires: tuple[str, ...] = ()) -> Task:
        @task(name=name, provides=provides, requires=requires)
        def run(**_: Any) -> str:
            order.append(name)
            return name

        return run

    c = step("c", requires=("from_b",))
    b = step("b", provides="from_b", requires=("from_a",))
    a = step("a", provides="from_a")
    z = step("z")
    flow = GraphFlow("g").add(c, b, a, z).link(c, z)
    Engine(flow).run()
    assert order.index("a") < order.index("b") < order.index("c") < order.index("z")


def test_serial_engine_runs_unordered_flow_in_insertion_order() -> None:
    order: list[int] = []

    def record(i: int) -> None:
        order.append(i)

    flow = UnorderedFlow("u").add(*[task(name=f"t{i}", inject={"i": i})(record) for i in range(5)])
    Engine(flow).run()
    assert order == [0, 1, 2, 3, 4]


class GatedExecutor(SerialExecutor):
    """Holds every future until the test releases it; counts the peak in flight."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held: list[tuple[Future[Any], Any]] = []
        self.peak = 0
        self.lock = threading.Lock()

    def submit(self, call: TaskCall) -> Future[Any]:
        future: Future[Any] = Future()
        value = super().submit(call).result()
        with self.lock:
            self.held.append((future, value))
            self.peak = max(self.peak, len(self.held))
        return future

    def release_all(self) -> None:
        with self.lock:
            held, self.held = self.held, []
        for future, value in held:
            future.set_result(value)


def release_in_batches(executor: GatedExecutor, total: int) -> threading.Thread:
    """From another thread: whenever a full batch (capacity, or what is left) is held, release it.

    A scheduler that dispatched fewer than it may would leave a batch incomplete and time out.
    """

    def run() -> None:
        released = 0
        while released < total:
            batch = min(executor.capacity, total - released)
            wait_until(lambda: len(executor.held) >= batch, 10, 0.001, f"{batch} tasks in flight")
            released += len(executor.held)
            executor.release_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_dispatches_up_to_capacity_and_completes_from_other_threads() -> None:
    executor = GatedExecutor(capacity=3)
    flow = UnorderedFlow("u").add(*[task(name=f"t{i}")(lambda: None) for i in range(7)])
    engine = Engine(flow, executor=executor)
    releaser = release_in_batches(executor, 7)
    engine.run()
    releaser.join()
    assert executor.peak == 3
    assert all(engine.storage.get_state(f"t{i}") == TaskState.SUCCESS for i in range(7))


def test_large_capacity_executor_gets_every_ready_task_at_once() -> None:
    executor = GatedExecutor(capacity=1000)
    flow = UnorderedFlow("u").add(*[task(name=f"t{i}")(lambda: None) for i in range(50)])
    releaser = release_in_batches(executor, 50)
    states = list(Engine(flow, executor=executor).run_iter())
    releaser.join()
    assert executor.peak == 50
    assert states[-1] == FlowState.SUCCESS


class CountingExecutor(SerialExecutor):
    def __init__(self) -> None:
        self.starts = 0
        self.stops = 0

    def start(self) -> None:
        self.starts += 1

    def stop(self) -> None:
        self.stops += 1


def test_engine_starts_executors_and_stops_only_its_own() -> None:
    executor = CountingExecutor()
    Engine(LinearFlow("f").add(task(name="t")(lambda: None)), executor=executor).run()
    assert executor.starts == 1
    assert executor.stops == 0


def test_finished_engine_does_not_run_again() -> None:
    calls: list[int] = []
    engine = Engine(LinearFlow("f").add(task(name="t")(lambda: calls.append(1))))
    engine.run()
    engine.run()
    assert calls == [1]
    assert list(engine.run_iter()) == []


def test_storage_can_be_given() -> None:
    storage = MemoryStorage()
    Engine(LinearFlow("f").add(Add()), store={"a": 1, "b": 2}, storage=storage).run()
    assert storage.fetch("sum") == 3
    assert storage.get_flow_state() == FlowState.SUCCESS


def test_async_tasks_run() -> None:
    @task(provides="v")
    async def coro(a: int) -> int:
        return a + 1

    assert workerflow.run(LinearFlow("f").add(coro), store={"a": 1})["v"] == 2


def test_run_iter_yields_running_then_success() -> None:
    flow = LinearFlow("f").add(Add())
    states = list(Engine(flow, store={"a": 1, "b": 2}).run_iter())
    assert states[0] == FlowState.RUNNING
    assert states[-1] == FlowState.SUCCESS
    assert set(states) == {FlowState.RUNNING, FlowState.SUCCESS}


def test_engine_cannot_be_run_reentrantly() -> None:
    holder: list[Engine] = []
    errors: list[BaseException] = []

    def reenter() -> None:
        try:
            holder[0].run()
        except RuntimeError as exc:
            errors.append(exc)

    engine = Engine(LinearFlow("f").add(task(name="t")(reenter)))
    holder.append(engine)
    engine.run()
    assert errors and "already running" in str(errors[0])


def test_a_local_flow_imports_no_message_bus() -> None:
    code = (
        "import sys, workerflow\n"
        "from workerflow.executors import ProcessExecutor, ThreadExecutor\n"
        "workerflow.run(workerflow.LinearFlow('f').add(workerflow.task(lambda: 1)))\n"
        "assert 'kombu' not in sys.modules, 'kombu imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
