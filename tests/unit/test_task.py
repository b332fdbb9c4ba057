"""Task and @task: inputs from the signature, requires/rebind/inject/provides/name, run_action."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from workerflow import FunctionTask, Task, task
from workerflow.failure import Failure
from workerflow.task import run_action


class Add(Task):
    provides = "sum"

    def execute(self, a: int, b: int = 2) -> int:
        return a + b


class Undoable(Task):
    def execute(self, x: int) -> int:
        return x

    def revert(self, x: int, result: Any) -> tuple[int, Any]:
        return x, result


def test_inputs_from_signature_with_optional_defaults() -> None:
    inputs = Add().inputs
    assert dict(inputs.required) == {"a": "a"}
    assert dict(inputs.optional) == {"b": "b"}
    assert inputs.extra == frozenset()
    assert inputs.all_names() == {"a", "b"}


def test_class_attributes_and_constructor_keywords() -> None:
    default = Add()
    assert default.name == "Add" and default.provides == "sum"
    custom = Add(name="add2", provides="total", rebind={"a": "sum"}, inject={"b": 5})
    assert custom.name == "add2" and custom.provides_names == ("total",)
    assert dict(custom.inputs.required) == {"a": "sum"}
    assert dict(custom.inputs.optional) == {}  # injected
    assert Add().provides == "sum"  # the class default is untouched


def test_requires_adds_keyword_inputs_and_makes_optional_ones_required() -> None:
    class Kw(Task):
        requires = ("extra", "b")

        def execute(self, a: int, b: int = 1, **kwargs: Any) -> None:
            pass

    inputs = Kw(rebind={"extra": "other"}).inputs
    assert dict(inputs.required) == {"a": "a", "extra": "other", "b": "b"}
    assert dict(inputs.optional) == {}
    assert inputs.extra == frozenset({"extra"})


def test_rebind_of_an_unknown_name_is_an_error() -> None:
    with pytest.raises(TypeError, match="nope"):
        _ = Add(rebind={"nope": "x"}).inputs


def test_tuple_provides() -> None:
    assert Add(provides=("q", "r")).provides_names == ("q", "r")
    assert Task.provides is None and Add(provides=None).provides_names == ()


def test_task_decorator_forms() -> None:
    @task
    def plain(a: int) -> int:
        return a

    def undo(a: int, result: int) -> None:
        pass

    @task(provides="v", name="named", revert=undo)
    def decorated(a: int) -> int:
        return a * 2

    assert isinstance(plain, FunctionTask)
    assert plain.name.endswith("plain") and not plain.has_revert
    assert decorated.name == "named" and decorated.provides == "v" and decorated.has_revert
    assert decorated(3) == 6  # still callable as the function
    assert decorated.task_type == f"{__name__}:{decorated.function.__qualname__}"
    again = decorated.clone(name="again", provides="w")
    assert (again.name, again.provides, again.reverter) == ("again", "w", undo)


def test_task_type_and_has_revert() -> None:
    assert Add().task_type == f"{__name__}:Add"
    assert not Add().has_revert
    assert Undoable().has_revert


def test_run_action_execute_and_revert_pass_only_accepted_arguments() -> None:
    assert run_action(Add(), "execute", {"a": 1, "b": 2}) == 3
    failure = Failure(("builtins.ValueError",), "x")
    out = run_action(Undoable(), "revert", {"x": 4}, result=failure, flow_failures={"t": failure})
    assert out == (4, failure)
    with pytest.raises(ValueError):
        run_action(Add(), "destroy", {})  # type: ignore[arg-type]


def test_run_action_runs_async_tasks() -> None:
    class Async(Task):
        async def execute(self, a: int) -> int:
            await asyncio.sleep(0)
            return a

    @task
    async def fn(a: int) -> int:
        return a + 1

    assert run_action(Async(), "execute", {"a": 1}) == 1
    assert run_action(fn, "execute", {"a": 1}) == 2


def test_update_progress_goes_to_the_sink_clamped_and_is_a_noop_outside_a_run() -> None:
    reports: list[tuple[float, dict[str, Any]]] = []

    class Reporter(Task):
        def execute(self) -> None:
            self.update_progress(1.5, stage="x")
            self.update_progress(-1)

    Reporter().update_progress(0.5)  # nothing happens outside a run
    run_action(Reporter(), "execute", {}, progress=lambda f, d: reports.append((f, d)))
    assert reports == [(1.0, {"stage": "x"}), (0.0, {})]


def test_default_execute_raises() -> None:
    with pytest.raises(NotImplementedError):
        Task().execute()
    assert repr(Add(name="x")) == "<Add 'x'>"
