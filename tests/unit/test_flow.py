"""Building flows: add returns the flow, only tasks and flows go in, links, nesting."""

from __future__ import annotations

import pytest

from workerflow import GraphFlow, LinearFlow, Task, UnorderedFlow, task
from workerflow.retry import Times


class Noop(Task):
    def execute(self) -> None:
        pass


def test_add_returns_the_flow_and_keeps_order() -> None:
    a, b = Noop(name="a"), Noop(name="b")
    inner = UnorderedFlow("inner")
    flow = LinearFlow("f")
    assert flow.add(a, inner).add(b) is flow
    assert list(flow) == [a, inner, b]
    assert len(flow) == 3
    assert [t.name for t in LinearFlow("x").add(a, inner.add(b)).iter_tasks()] == ["a", "b"]


def test_add_rejects_plain_functions_with_a_hint() -> None:
    def plain() -> None:
        pass

    with pytest.raises(TypeError, match="@task"):
        LinearFlow("f").add(plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        LinearFlow("f").add(42)  # type: ignore[arg-type]


def test_flow_needs_a_name_and_keeps_its_retry() -> None:
    with pytest.raises(ValueError):
        LinearFlow("")
    retry = Times(2)
    assert LinearFlow("f", retry=retry).retry is retry


def test_graph_flow_link_returns_the_flow() -> None:
    a, b = Noop(name="a"), task(name="b")(lambda: None)
    flow = GraphFlow("g").add(a, b)
    assert flow.link(a, b) is flow
    assert flow.links == [(a, b)]
    assert "GraphFlow 'g'" in repr(flow)
