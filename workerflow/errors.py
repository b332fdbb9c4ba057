"""Every exception workerflow raises on purpose, under one root.

::

    WorkerflowError
    ├── CompilationError            the flow cannot run; raised before any task starts
    │   ├── MissingInput            a task needs a name nothing provides
    │   ├── CyclicDependency        tasks need each other's results
    │   ├── AmbiguousProvider       two tasks provide a name a third one needs
    │   └── DuplicateName           two atoms in one flow share a name
    ├── InvalidTransition           a state change the state machine forbids (a bug)
    ├── NotFound                    storage has no such name, task or flow
    ├── SerializationError          a value cannot cross a process or the wire
    ├── WrappedFailure              several tasks failed; holds every Failure
    ├── RemoteError                 a remote exception whose type is not importable here
    ├── ExecutorError               the executor itself cannot work (closed, broker down)
    └── RemoteFault                 a remote request went wrong outside the task's own code
        ├── NoWorkerAvailable       no live worker serves the task
        ├── RequestTimeout          no worker started the request before its deadline
        ├── ExecutionTimeout        the task ran past its execution_timeout
        ├── WorkerLost              the worker running the task stopped heartbeating
        └── MessageRejected         a worker refused the request

The five ``RemoteFault`` classes are produced by the worker-based executor and reach the engine as a
:class:`~workerflow.failure.Failure`, so they drive retry and revert like any exception from a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from workerflow.failure import Failure


class WorkerflowError(Exception):
    """Root of every exception workerflow raises on purpose."""


class CompilationError(WorkerflowError):
    """The flow cannot run as built; raised before any task starts."""


class MissingInput(CompilationError):
    """A task needs a name that neither the store nor an earlier task provides."""

    def __init__(self, task: str, names: Sequence[str]) -> None:
        self.task = task
        self.names = tuple(names)
        super().__init__(
            f"task {task!r} needs {', '.join(repr(n) for n in self.names)}, "
            "which neither the store nor any earlier task provides"
        )


class CyclicDependency(CompilationError):
    """Tasks depend on each other's results in a cycle."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        super().__init__(f"dependency cycle between tasks: {' -> '.join(self.tasks)}")


class AmbiguousProvider(CompilationError):
    """Several tasks provide a name and it is not clear which one a consumer means."""

    def __init__(self, name: str, providers: Sequence[str], consumer: str) -> None:
        self.name = name
        self.providers = tuple(providers)
        self.consumer = consumer
        super().__init__(
            f"task {consumer!r} needs {name!r}, which is provided by several tasks "
            f"({', '.join(repr(p) for p in self.providers)}); rename one with 'provides' "
            "or pick one with 'rebind'"
        )


class DuplicateName(CompilationError):
    """Two atoms (tasks, flows or retry controllers) in one flow share a name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"the name {name!r} is used twice in the flow; give one a distinct 'name='"
        )


class InvalidTransition(WorkerflowError):
    """A state change the state machine forbids; always a bug in workerflow or its caller."""

    def __init__(self, subject: str, current: str, target: str) -> None:
        self.subject = subject
        self.current = current
        self.target = target
        super().__init__(f"{subject}: cannot go from {current} to {target}")


class NotFound(WorkerflowError):
    """Storage holds no value, task or flow under that name."""


class SerializationError(WorkerflowError):
    """A value cannot cross a process boundary or the wire (say what and where)."""


class WrappedFailure(WorkerflowError):
    """Several tasks failed in one run; ``failures`` holds every one of them."""

    def __init__(self, failures: Sequence[Failure]) -> None:
        self.failures = tuple(failures)
        super().__init__(
            f"{len(self.failures)} tasks failed: " + "; ".join(str(f) for f in self.failures)
        )

    def __iter__(self) -> Iterator[Failure]:
        return iter(self.failures)

    def __len__(self) -> int:
        return len(self.failures)


class RemoteError(WorkerflowError):
    """A remote task raised an exception whose type is not importable on this side.

    ``failure`` keeps the remote type names, message and traceback text.
    """

    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        super().__init__(f"{failure.exception_type_names[0]}: {failure.message}")


class ExecutorError(WorkerflowError):
    """The executor cannot do its job: it is closed, or its broker cannot be reached."""


class RemoteFault(WorkerflowError):
    """A remote request went wrong outside the task's own code."""


class NoWorkerAvailable(RemoteFault):
    """No live worker serves this task within the discovery window."""


class RequestTimeout(RemoteFault):
    """No worker started the request before its schedule-to-start deadline; it will never run."""


class ExecutionTimeout(RemoteFault):
    """The task ran past its ``execution_timeout``."""


class WorkerLost(RemoteFault):
    """The worker running the task stopped heartbeating (crash, SIGKILL, partition)."""


class MessageRejected(RemoteFault):
    """A worker refused the request: unknown task, bad payload, bad signature or too large."""
