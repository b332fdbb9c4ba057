"""Compilation validates a flow before anything runs and names the problem."""

from __future__ import annotations

from typing import Any

import pytest

from workerflow import Engine, GraphFlow, LinearFlow, Task, UnorderedFlow, task
from workerflow.compiler import STORE, compile_flow
from workerflow.errors import (
    AmbiguousProvider,
    CompilationError,
    CyclicDependency,
    DuplicateName,
    MissingInput,
)
from workerflow.retry import ForEach, ParameterizedForEach


def make(name: str, provides: str | tuple[str, ...] | None = None, requires: Any = ()) -> Task:
    ran: list[str] = []

    @task(name=name, provides=provides, requires=requires)
    def run(**_: Any) -> None:
        ran.append(name)

    return run


def test_missing_input_names_the_task_and_the_names_before_anything_runs() -> None:
    ran: list[str] = []

    @task(name="first")
    def first() -> None:
        ran.append("first")

    @task(name="needy")
    def needy(alpha: int, beta: int, gamma: int = 0) -> None:
        pass

    engine = Engine(LinearFlow("f").add(first, needy), store={"beta": 1})
    with pytest.raises(MissingInput) as raised:
        engine.run()
    assert raised.value.task == "needy"
    assert raised.value.names == ("alpha",)
    assert "'needy' needs 'alpha'" in str(raised.value)
    assert ran == []


def test_linear_flow_only_sees_earlier_providers() -> None:
    flow = LinearFlow("f").add(make("consumer", requires="x"), make("producer", provides="x"))
    with pytest.raises(MissingInput, match="consumer"):
        compile_flow(flow)


def test_unordered_siblings_cannot_feed_each_other() -> None:
    flow = UnorderedFlow("u").add(make("producer", provides="x"), make("consumer", requires="x"))
    with pytest.raises(MissingInput):
        compile_flow(flow)
    compiled = compile_flow(flow, {"x"})  # from the store it is fine
    assert compiled.by_name["consumer"].bindings[0].source == STORE


def test_cycle_names_the_tasks() -> None:
    flow = GraphFlow("g").add(
        make("a", provides="x", requires="z"),
        make("b", provides="y", requires="x"),
        make("c", provides="z", requires="y"),
        make("free"),
    )
    with pytest.raises(CyclicDependency) as raised:
        compile_flow(flow)
    assert set(raised.value.tasks) == {"a", "b", "c"}
    assert raised.value.tasks[0] == raised.value.tasks[-1]
    assert "dependency cycle" in str(raised.value)


def test_explicit_link_can_make_a_cycle() -> None:
    a, b = make("a", provides="x"), make("b", requires="x")
    with pytest.raises(CyclicDependency):
        compile_flow(GraphFlow("g").add(a, b).link(b, a))


def test_link_to_an_item_outside_the_flow_is_an_error() -> None:
    a, stranger = make("a"), make("stranger")
    with pytest.raises(CompilationError, match="stranger"):
        compile_flow(GraphFlow("g").add(a).link(a, stranger))


def test_ambiguous_provider_in_a_graph() -> None:
    flow = GraphFlow("g").add(
        make("p1", provides="x"), make("p2", provides="x"), make("c", requires="x")
    )
    with pytest.raises(AmbiguousProvider) as raised:
        compile_flow(flow)
    assert raised.value.name == "x"
    assert set(raised.value.providers) == {"p1", "p2"}
    assert raised.value.consumer == "c"


def test_ambiguous_provider_inside_an_earlier_unordered_flow() -> None:
    flow = LinearFlow("f").add(
        UnorderedFlow("u").add(make("p1", provides="x"), make("p2", provides="x")),
        make("c", requires="x"),
    )
    with pytest.raises(AmbiguousProvider):
        compile_flow(flow)


@pytest.mark.parametrize(
    "flow",
    [
        LinearFlow("f").add(make("same"), make("same")),
        LinearFlow("f").add(make("f")),
        LinearFlow("f").add(LinearFlow("inner"), UnorderedFlow("inner")),
    ],
)
def test_duplicate_names(flow: LinearFlow) -> None:
    with pytest.raises(DuplicateName):
        compile_flow(flow)


def test_the_same_task_object_twice_is_a_duplicate() -> None:
    t = make("t")
    with pytest.raises(DuplicateName, match="'t'"):
        compile_flow(LinearFlow("f").add(t, LinearFlow("g").add(t)))


def test_graph_inference_between_nested_flows_orders_whole_items() -> None:
    producer_flow = LinearFlow("pf").add(make("p1"), make("p2", provides="x"))
    consumer_flow = LinearFlow("cf").add(make("c1", requires="x"), make("c2"))
    compiled = compile_flow(GraphFlow("g").add(consumer_flow, producer_flow))
    nodes = compiled.by_name
    assert nodes["c1"].predecessors == [nodes["p2"].index]
    assert nodes["c1"].bindings[0].source == nodes["p2"].index


def test_tuple_provides_bind_by_position() -> None:
    compiled = compile_flow(
        LinearFlow("f").add(make("pair", provides=("left", "right")), make("c", requires="right"))
    )
    binding = compiled.by_name["c"].bindings[0]
    assert binding.source == compiled.by_name["pair"].index
    assert binding.position == 1


def test_retry_controller_provides_to_its_flow_and_reads_from_outside() -> None:
    inner = LinearFlow("inner", retry=ParameterizedForEach(requires="values", provides="v"))
    inner.add(make("uses", requires="v"))
    flow = LinearFlow("outer").add(make("makes", provides="values"), inner)
    compiled = compile_flow(flow)
    controller = compiled.by_name["inner.retry"]
    assert controller.bindings[0].source == compiled.by_name["makes"].index
    assert compiled.by_name["uses"].bindings[0].source == controller.index
    assert compiled.by_name["uses"].predecessors == [controller.index]
    assert controller.controls is not None
    assert compiled.by_name["uses"].index in controller.controls.members


def test_retry_controller_missing_input() -> None:
    flow = LinearFlow("f", retry=ParameterizedForEach(requires="values", provides="v"))
    with pytest.raises(MissingInput, match=r"'f\.retry' needs 'values'"):
        compile_flow(flow)


def test_empty_nested_flows_do_not_break_the_chain() -> None:
    a, b = make("a"), make("b")
    compiled = compile_flow(
        LinearFlow("f").add(a, UnorderedFlow("empty"), LinearFlow("retried", retry=ForEach([1])), b)
    )
    nodes = compiled.by_name
    assert nodes["retried.retry"].predecessors == [nodes["a"].index]
    assert nodes["b"].predecessors == [nodes["retried.retry"].index]


def test_bad_rebind_is_reported() -> None:
    @task(rebind={"nope": "x"})
    def t(a: int) -> None:
        pass

    with pytest.raises(TypeError, match="nope"):
        compile_flow(LinearFlow("f").add(t), {"a"})


def test_compile_rejects_non_flows() -> None:
    with pytest.raises(TypeError):
        compile_flow(make("t"))  # type: ignore[arg-type]
