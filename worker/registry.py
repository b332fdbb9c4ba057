"""Registry: the tasks a worker serves, keyed by ``task_type`` (``module:QualName``).

Only registered tasks run: a request names a task type and the worker builds a fresh task object
for it with ``name=`` only (a :class:`~workerflow.task.Task` subclass is instantiated; a ``@task``
:class:`~workerflow.task.FunctionTask` is cloned), so no code named on the wire is ever imported.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Iterable, Iterator
from types import ModuleType

from worker.errors import WorkerError
from workerflow.task import FunctionTask, Task

__all__ = ["Registry"]

log = logging.getLogger(__name__)

TaskSource = type[Task] | FunctionTask


def _is_concrete_task_class(obj: object) -> bool:
    if not (inspect.isclass(obj) and issubclass(obj, Task)):
        return False
    if obj.__module__.split(".")[0] == "workerflow" or "<locals>" in obj.__qualname__:
        return False  # the library's own bases (Task, FunctionTask), and classes nobody can name
    if issubclass(obj, FunctionTask):
        return False  # needs a function; registered through its instances instead
    # A base class that never defines execute cannot run; skip it rather than fail at request time.
    return obj.execute is not Task.execute and not inspect.isabstract(obj)


def import_module(module: str | ModuleType) -> ModuleType:
    """Import a task module by name; a failure is a :class:`WorkerError` naming the module."""
    if isinstance(module, ModuleType):
        return module
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise WorkerError(
            f"cannot import task module {module!r}: {type(exc).__name__}: {exc}"
        ) from exc


class Registry:
    """Task types a worker may run, and how to build each one."""

    def __init__(self) -> None:
        self._sources: dict[str, TaskSource] = {}

    @classmethod
    def from_modules(cls, modules: Iterable[str | ModuleType]) -> Registry:
        """Register every task found in ``modules`` (module names or module objects)."""
        registry = cls()
        for module in modules:
            registry.add_module(import_module(module))
        return registry

    def add_module(self, module: ModuleType) -> int:
        """Register the Task subclasses and ``@task`` functions at the top level of ``module``.

        Tasks imported into the module from elsewhere are registered too, under their own
        ``task_type``, so a module that re-exports tasks serves them. Returns how many were added.
        """
        added = 0
        for _, obj in sorted(vars(module).items()):
            if isinstance(obj, FunctionTask) or _is_concrete_task_class(obj):
                added += self.add(obj)
        log.debug("registered %d task types from %s", added, module.__name__)
        return added

    def add(self, source: TaskSource) -> int:
        """Register one task class or ``@task`` object; returns 1 if new, 0 if already there."""
        if isinstance(source, FunctionTask):
            task_type = source.task_type
        elif inspect.isclass(source) and issubclass(source, Task):
            task_type = f"{source.__module__}:{source.__qualname__}"
        else:
            raise TypeError(f"not a Task subclass nor a @task function: {source!r}")
        existing = self._sources.get(task_type)
        if existing is not None:
            if existing is source:
                return 0
            raise WorkerError(f"two different tasks claim the task type {task_type!r}")
        self._sources[task_type] = source
        return 1

    def build(self, task_type: str, name: str) -> Task:
        """A new task object for ``task_type`` named ``name``; KeyError if it is not registered."""
        source = self._sources[task_type]
        if isinstance(source, FunctionTask):
            return source.clone(name=name)
        return source(name=name)

    @property
    def task_types(self) -> list[str]:
        """Every registered task type, sorted."""
        return sorted(self._sources)

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._sources

    def __len__(self) -> int:
        return len(self._sources)

    def __iter__(self) -> Iterator[str]:
        return iter(self.task_types)
