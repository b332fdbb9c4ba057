"""The executor interface: how an engine hands a task action to whatever runs it.

An executor runs ``execute`` or ``revert`` of one task with arguments the engine has already
resolved, and reports the outcome through a :class:`concurrent.futures.Future` that resolves with
the returned value, or with a :class:`~workerflow.failure.Failure` when the action failed. The
future never raises: every fault, local or remote, arrives as a Failure so it drives retry and
revert the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from workerflow.failure import Failure
from workerflow.task import Action, ProgressSink, Task

__all__ = ["Executor", "TaskCall"]


@dataclass(frozen=True)
class TaskCall:
    """One action of one task, as the engine hands it to an executor."""

    task: Task
    #: "execute" or "revert".
    action: Action
    #: The task's resolved inputs.
    arguments: Mapping[str, Any]
    attempt: int = 1
    #: Revert only: the result (or Failure) of the execute being reverted.
    result: Any = None
    #: Revert only: the failures of the flow, by task name.
    flow_failures: Mapping[str, Failure] = field(default_factory=dict)
    #: Called as ``progress(fraction, details)``, from any thread, while the action runs.
    progress: ProgressSink | None = None


class Executor(ABC):
    """Runs task actions; subclasses implement :meth:`submit`."""

    #: How many actions the engine may have in flight on this executor at once.
    capacity: int = 1

    def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (pools, connections). Called by ``__enter__`` and by the engine."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Release everything :meth:`start` acquired; safe to call twice."""

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def execute(
        self,
        task: Task,
        arguments: Mapping[str, Any],
        *,
        attempt: int = 1,
        progress: ProgressSink | None = None,
    ) -> Future[Any]:
        """Run ``task.execute(**arguments)``; the future holds its result or a Failure."""
        return self.submit(TaskCall(task, "execute", arguments, attempt=attempt, progress=progress))

    def revert(
        self,
        task: Task,
        arguments: Mapping[str, Any],
        *,
        result: Any,
        flow_failures: Mapping[str, Failure],
        attempt: int = 1,
        progress: ProgressSink | None = None,
    ) -> Future[Any]:
        """Run the task's revert with its inputs, its ``result`` and the flow's failures."""
        return self.submit(
            TaskCall(
                task,
                "revert",
                arguments,
                attempt=attempt,
                result=result,
                flow_failures=flow_failures,
                progress=progress,
            )
        )

    @abstractmethod
    def submit(self, call: TaskCall) -> Future[Any]:
        """Start ``call``; never raises for task errors.

        ``call.progress`` may be called from any thread while the action runs.
        """
