"""Registry and WorkerSettings: which tasks a worker serves, and how it is configured."""

from __future__ import annotations

import sys
import types

import pytest

from tests import remote_tasks
from worker.errors import WorkerError
from worker.registry import Registry
from worker.settings import WorkerSettings
from workerflow import Task, task
from workerflow.errors import WorkerflowError
from workerflow.task import FunctionTask


def test_registers_task_classes_and_functions_by_task_type() -> None:
    registry = Registry.from_modules(["tests.remote_tasks"])
    assert "tests.remote_tasks:Add" in registry
    assert "tests.remote_tasks:multiply" in registry
    assert "workerflow.task:Task" not in registry
    assert "workerflow.task:FunctionTask" not in registry
    assert registry.task_types == sorted(registry.task_types)


def test_accepts_module_objects() -> None:
    assert "tests.remote_tasks:Sleep" in Registry.from_modules([remote_tasks])


def test_builds_a_fresh_task_with_the_requested_name() -> None:
    registry = Registry.from_modules([remote_tasks])
    add = registry.build("tests.remote_tasks:Add", "add-1")
    assert isinstance(add, remote_tasks.Add) and add.name == "add-1"
    assert add.provides == "sum"
    mul = registry.build("tests.remote_tasks:multiply", "mul-1")
    assert isinstance(mul, FunctionTask) and mul.name == "mul-1"
    assert mul.execute(a=3, b=4) == 12
    assert mul is not remote_tasks.multiply
    with pytest.raises(KeyError):
        registry.build("tests.remote_tasks:Nope", "x")


def _module(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def test_skips_bases_without_execute_and_registers_reexported_tasks() -> None:
    class Base(Task):
        pass

    class Concrete(Base):
        def execute(self) -> int:
            return 1

    for cls in (Base, Concrete):
        cls.__module__, cls.__qualname__ = "wf_fake_tasks", cls.__name__
    module = _module("wf_fake_tasks", Base=Base, Concrete=Concrete, Add=remote_tasks.Add)
    registry = Registry()
    assert registry.add_module(module) == 2
    assert registry.task_types == ["tests.remote_tasks:Add", "wf_fake_tasks:Concrete"]


def test_two_tasks_claiming_one_type_is_an_error() -> None:
    def f() -> None: ...

    registry = Registry()
    registry.add(task(f))
    with pytest.raises(WorkerError, match="two different tasks"):
        registry.add(task(f))


def test_module_that_fails_to_import_is_a_clear_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "wf_broken_tasks.py").write_text("raise RuntimeError('kaput')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WorkerError, match=r"wf_broken_tasks.*RuntimeError: kaput") as info:
        Registry.from_modules(["wf_broken_tasks"])
    assert isinstance(info.value, WorkerflowError)
    sys.modules.pop("wf_broken_tasks", None)
    with pytest.raises(WorkerError, match="no_such_module_here"):
        Registry.from_modules(["no_such_module_here"])


def test_settings_defaults_and_validation() -> None:
    settings = WorkerSettings()
    assert settings.namespace == "workerflow"
    assert settings.queues == ("default",)
    assert settings.concurrency >= 1
    assert settings.pool == "threads"
    assert settings.heartbeat_interval == 1.0
    assert settings.grace_period == 30.0
    assert settings.max_message_size == 1 << 20
    assert WorkerSettings(secret="s").secret_bytes == b"s"
    assert WorkerSettings(queues=["a", "b"]).queues == ("a", "b")  # type: ignore[arg-type]
    for bad in (
        {"concurrency": 0},
        {"pool": "fork"},
        {"queues": ()},
        {"queues": ("a", "a")},
        {"heartbeat_interval": 0},
        {"grace_period": -1},
        {"secret": ""},
    ):
        with pytest.raises(ValueError):
            WorkerSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        WorkerSettings(queues="default")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        settings.concurrency = 3  # type: ignore[misc]
