"""Task: a unit of work with ``execute()`` and an optional ``revert()`` that undoes it.

A task's inputs are the parameters of its ``execute`` (parameters with defaults are optional) plus
the names in ``requires``; ``rebind`` maps a parameter to another stored name and ``inject`` gives
per-task constants; ``provides`` names the result (a tuple of names unpacks a sequence). Each of
these, and ``name``, can be a class attribute or a constructor keyword, so one class serves many
places in a flow.

The same task definitions are imported by the client and by every worker; a worker finds a task by
its ``task_type`` (``module:QualName``) and builds it with ``name=`` only, so a task class must be
constructible from keyword defaults alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    from workerflow.failure import Failure
    from workerflow.retry import RetryPolicy

__all__ = [
    "Action",
    "FunctionTask",
    "ProgressSink",
    "Task",
    "TaskInputs",
    "run_action",
    "task",
]

Action = Literal["execute", "revert"]

#: Receives ``(fraction, details)`` from :meth:`Task.update_progress`.
ProgressSink = Callable[[float, dict[str, Any]], None]

_progress_sink: contextvars.ContextVar[ProgressSink | None] = contextvars.ContextVar(
    "workerflow_progress_sink", default=None
)

_UNSET: Any = object()


@dataclass(frozen=True)
class TaskInputs:
    """What a task reads from storage: parameter name -> stored name, split by need."""

    required: Mapping[str, str]  # must be present before the task runs
    optional: Mapping[str, str]  # passed when present, else the parameter's default applies
    extra: frozenset[str]  # names from ``requires``, passed as keyword arguments

    def all_names(self) -> set[str]:
        """Every stored name the task may read."""
        return set(self.required.values()) | set(self.optional.values())


def _names(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


class Task:
    """Subclass and define ``execute``; define ``revert`` to undo it when the flow fails."""

    #: Unique within a flow; "" means the class's qualified name.
    name: str = ""
    provides: str | tuple[str, ...] | None = None
    requires: str | tuple[str, ...] | None = None
    rebind: Mapping[str, str] | None = None
    inject: Mapping[str, Any] | None = None
    #: Seconds the task may run before it fails with ExecutionTimeout.
    execution_timeout: float | None = None
    #: Task-level retry for transient errors (see :class:`workerflow.retry.RetryPolicy`).
    retry_policy: RetryPolicy | None = None
    #: Worker queue the task is sent to by the worker-based executor; None means the default one.
    queue: str | None = None

    def __init__(
        self,
        *,
        name: str | None = None,
        provides: str | tuple[str, ...] | None = _UNSET,
        requires: str | tuple[str, ...] | None = _UNSET,
        rebind: Mapping[str, str] | None = _UNSET,
        inject: Mapping[str, Any] | None = _UNSET,
        execution_timeout: float | None = _UNSET,
        retry_policy: RetryPolicy | None = _UNSET,
        queue: str | None = _UNSET,
    ) -> None:
        cls = type(self)
        # Instance attributes shadow the class defaults only where a keyword was given.
        self.name = name or cls.name or self.default_name()
        for attr, value in (
            ("provides", provides),
            ("requires", requires),
            ("rebind", rebind),
            ("inject", inject),
            ("execution_timeout", execution_timeout),
            ("retry_policy", retry_policy),
            ("queue", queue),
        ):
            setattr(self, attr, getattr(cls, attr) if value is _UNSET else value)
        self._inputs: TaskInputs | None = None

    # -- definition ----------------------------------------------------------------------------

    def default_name(self) -> str:
        """The name used when none is given: the class's qualified name."""
        return type(self).__qualname__

    @property
    def task_type(self) -> str:
        """``module:QualName``: how a worker finds this task's code in its registry."""
        cls = type(self)
        return f"{cls.__module__}:{cls.__qualname__}"

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work; the return value is stored under ``provides``."""
        raise NotImplementedError(f"{type(self).__qualname__} does not define execute()")

    def revert(self, *args: Any, **kwargs: Any) -> Any:
        """Undo ``execute``; receives the inputs plus ``result`` and ``flow_failures``."""
        return None

    @property
    def has_revert(self) -> bool:
        """Whether reverting this task does anything (the engine skips no-op reverts)."""
        return type(self).revert is not Task.revert

    def execute_callable(self) -> Callable[..., Any]:
        """The callable whose signature defines the inputs and which execute runs."""
        return self.execute

    def revert_callable(self) -> Callable[..., Any]:
        """The callable revert runs."""
        return self.revert

    @property
    def provides_names(self) -> tuple[str, ...]:
        """The stored names the result goes under (several when the result is unpacked)."""
        return _names(self.provides)

    @property
    def inputs(self) -> TaskInputs:
        """Parameter -> stored name, after ``rebind``; ``inject`` values are not included."""
        if self._inputs is None:
            self._inputs = self._compute_inputs()
        return self._inputs

    def _compute_inputs(self) -> TaskInputs:
        rebind = dict(self.rebind or {})
        inject = dict(self.inject or {})
        required: dict[str, str] = {}
        optional: dict[str, str] = {}
        for name, has_default in _parameters(self.execute_callable()):
            if name in inject:
                continue
            target = rebind.get(name, name)
            if has_default:
                optional[name] = target
            else:
                required[name] = target
        extra = set()
        for requirement in _names(self.requires):
            if requirement in inject or requirement in required:
                continue
            if requirement in optional:
                # ``requires`` makes an optional parameter required; it stays a parameter.
                required[requirement] = optional.pop(requirement)
                continue
            required[requirement] = rebind.get(requirement, requirement)
            extra.add(requirement)
        unknown = set(rebind) - set(required) - set(optional)
        if unknown:
            raise TypeError(
                f"task {self.name!r}: rebind names {sorted(unknown)} which are not inputs "
                f"of its execute() nor in requires"
            )
        return TaskInputs(required, optional, frozenset(extra))

    # -- running -------------------------------------------------------------------------------

    def update_progress(self, fraction: float, **details: Any) -> None:
        """Report progress (0.0 to 1.0) from execute or revert; it reaches ``engine.atom_notifier``.

        Works for local and remote runs alike; outside a run it does nothing.
        """
        sink = _progress_sink.get()
        if sink is not None:
            sink(min(1.0, max(0.0, float(fraction))), details)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r}>"


class FunctionTask(Task):
    """A task made from a plain function by :func:`task`; calling it calls the function."""

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        reverter: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        self.function = function
        self.reverter = reverter
        super().__init__(**options)
        self._options = options

    def default_name(self) -> str:
        return self.function.__qualname__

    @property
    def task_type(self) -> str:
        return f"{self.function.__module__}:{self.function.__qualname__}"

    def execute_callable(self) -> Callable[..., Any]:
        return self.function

    def revert_callable(self) -> Callable[..., Any]:
        return self.reverter if self.reverter is not None else self.revert

    @property
    def has_revert(self) -> bool:
        return self.reverter is not None

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def clone(self, **options: Any) -> FunctionTask:
        """The same function placed again, with other ``name``, ``provides``, ... options."""
        merged = {**self._options, **options}
        return FunctionTask(self.function, reverter=self.reverter, **merged)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


@overload
def task(function: Callable[..., Any], /) -> FunctionTask: ...
@overload
def task(
    function: None = None,
    /,
    *,
    name: str | None = None,
    provides: str | tuple[str, ...] | None = None,
    requires: str | tuple[str, ...] | None = None,
    rebind: Mapping[str, str] | None = None,
    inject: Mapping[str, Any] | None = None,
    execution_timeout: float | None = None,
    retry_policy: RetryPolicy | None = None,
    queue: str | None = None,
    revert: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], FunctionTask]: ...
def task(
    function: Callable[..., Any] | None = None,
    /,
    *,
    revert: Callable[..., Any] | None = None,
    **options: Any,
) -> FunctionTask | Callable[[Callable[..., Any]], FunctionTask]:
    """Make a task from a function: ``@task`` or ``@task(provides="x", revert=undo_x)``."""

    def wrap(fn: Callable[..., Any]) -> FunctionTask:
        return FunctionTask(fn, reverter=revert, **options)

    return wrap(function) if function is not None else wrap


def _parameters(function: Callable[..., Any]) -> tuple[tuple[str, bool], ...]:
    """``(name, has_default)`` of the named parameters of ``function``.

    Memoized per underlying function: inspecting a signature costs more than the rest of compiling
    a task, and a flow often places one class many times.
    """
    try:
        if inspect.ismethod(function):
            return _function_parameters(function.__func__)[1:]  # drop self
        return _function_parameters(function)
    except TypeError:  # an unhashable callable: inspect it every time
        return _function_parameters.__wrapped__(function)


@functools.lru_cache(maxsize=4096)
def _function_parameters(function: Callable[..., Any]) -> tuple[tuple[str, bool], ...]:
    return tuple(
        (p.name, p.default is not p.empty)
        for p in inspect.signature(function).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )


@contextmanager
def progress_to(sink: ProgressSink | None) -> Iterator[None]:
    """Route :meth:`Task.update_progress` calls made in this context to ``sink``."""
    token = _progress_sink.set(sink)
    try:
        yield
    finally:
        _progress_sink.reset(token)


def _accepted(function: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keyword arguments ``function`` accepts (all of them if it takes **kwargs)."""
    params = inspect.signature(function).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def run_action(
    task: Task,
    action: Action,
    arguments: Mapping[str, Any],
    *,
    result: Any = None,
    flow_failures: Mapping[str, Failure] | None = None,
    progress: ProgressSink | None = None,
) -> Any:
    """Run ``task.execute(**arguments)`` or its revert, with progress routed to ``progress``.

    The one place that calls task code, shared by every executor and the worker: it passes revert
    only the keyword arguments it accepts and runs ``async def`` tasks to completion.
    """
    if action == "execute":
        function = task.execute_callable()
        kwargs = dict(arguments)
    elif action == "revert":
        function = task.revert_callable()
        kwargs = _accepted(
            function, {**arguments, "result": result, "flow_failures": dict(flow_failures or {})}
        )
    else:
        raise ValueError(f"unknown action {action!r}; expected 'execute' or 'revert'")
    with progress_to(progress):
        if inspect.iscoroutinefunction(function):
            return asyncio.run(function(**kwargs))
        value = function(**kwargs)
        if inspect.iscoroutine(value):
            return asyncio.run(value)
        return value
